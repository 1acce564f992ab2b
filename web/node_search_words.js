// The node search finds the pack's five nodes by the words an artist types ("multi subject",
// "subject", "MS-Diffusion", "personalization", a method's name), not only by their names.
//
// Frontends that search node search_aliases get the words from the server's node definitions
// (nodes/types.py). Older ones, such as 1.32 embedded in ComfyUI 0.3.75, search node ids and
// display names only and offer extensions no search hook, so on those this module wraps their
// node search service: the same words are matched with the frontend's own fuzzy matcher and
// settings, and pack nodes that the words find but the names did not are added to the results
// (after the pack nodes already found, or first). Filters still apply. The service is reached
// through the frontend's store registry; if anything there is not as expected, or the frontend
// searches aliases itself, the search is left untouched.

import { app } from "../../scripts/app.js";

const NODE_ID_PREFIX = "MSP_";

/** The pack's search words: SEARCH_ALIASES in nodes/types.py (a test keeps the two lists equal). */
export const SEARCH_WORDS = [
  "multi subject", "multi-subject", "subject", "MS-Diffusion", "msdiffusion", "personalization",
  "personalisation", "SSR-Encoder", "FastComposer", "AnyStory",
];

const wordMatchers = new WeakMap(); // search service -> fuzzy matcher over the pack's words

/** The frontend's node search service, or null when its store registry is not as expected. */
function nodeSearchService() {
  const stores = app.extensionManager?._p?._s;
  const service = typeof stores?.get === "function" ? stores.get("nodeDef")?.nodeSearchService : null;
  const fuse = service?.nodeFuseSearch?.fuse;
  const usable = typeof service?.searchNode === "function" && Array.isArray(service.nodeFuseSearch.data)
    && Array.isArray(service.nodeFuseSearch.keys) && typeof fuse?.constructor === "function";
  return usable ? service : null;
}

/** A matcher of the pack's words with the frontend's own fuzzy search and options (one per service). */
function wordMatcher(service) {
  let matcher = wordMatchers.get(service);
  if (!matcher) {
    const { fuse, data } = service.nodeFuseSearch;
    const entries = data.filter((def) => typeof def?.name === "string" && def.name.startsWith(NODE_ID_PREFIX))
      .flatMap((def) => SEARCH_WORDS.map((word) => ({ def, word })));
    const { threshold, useExtendedSearch } = fuse.options ?? {};
    matcher = new fuse.constructor(entries, { keys: ["word"], threshold, useExtendedSearch });
    wordMatchers.set(service, matcher);
  }
  return matcher;
}

/** Pack nodes the words find and `found` lacks, put after the last pack node in `found` (or first). */
function withPackNodes(service, found, query, filters, matchWildcards) {
  if (typeof query !== "string" || !query.trim()) return found;
  const wildcard = matchWildcards ? "*" : undefined;
  const passes = (def) => filters.every(({ filterDef, value }) => filterDef.matches(def, value, { wildcard }));
  const missing = [];
  for (const { item } of wordMatcher(service).search(query)) {
    if (!found.includes(item.def) && !missing.includes(item.def) && passes(item.def)) missing.push(item.def);
  }
  if (!missing.length) return found;
  let at = 0;
  found.forEach((def, i) => { if (def?.name?.startsWith(NODE_ID_PREFIX)) at = i + 1; });
  return [...found.slice(0, at), ...missing, ...found.slice(at)];
}

/** Wrap searchNode of the service's class once, unless the frontend searches aliases itself. */
function addSearchWords(service) {
  const proto = Object.getPrototypeOf(service);
  if (proto.mspSearchWords || service.nodeFuseSearch.keys.includes("search_aliases")) return;
  const searchNode = proto.searchNode;
  proto.searchNode = function (query, filters = [], options, extra = {}) {
    const found = searchNode.call(this, query, filters, undefined, extra);
    let results = found;
    try {
      results = withPackNodes(this, found, query, filters, extra?.matchWildcards ?? true);
    } catch (error) {
      console.warn("[comfyui-multisubject] node search words skipped:", error);
    }
    return options?.limit ? results.slice(0, options.limit) : results;
  };
  proto.mspSearchWords = true;
}

app.registerExtension({
  name: "comfyui-multisubject.NodeSearchWords",

  setup() {
    const service = nodeSearchService();
    if (service) addSearchWords(service);
    else console.debug("[comfyui-multisubject] node search service not found; nodes are found by their names");
  },
});
