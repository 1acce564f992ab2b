// Inline code in markdown notes (the examples name their model files that way): the frontend draws it
// blue on a translucent blue chip, nearly unreadable on a coloured note in Nodes 2.0. A dark chip with
// light text reads on every note colour, in both node renderers (contrast checked by the browser tests).

import { app } from "../../scripts/app.js";
import { addStyle } from "./layout_dom.js";

const NOTE_CODE_CSS = `
.widget-markdown :not(pre) > code, .comfy-markdown :not(pre) > code {
  color: #ffe9b3; background-color: rgba(0, 0, 0, 0.55);
}`;

app.registerExtension({
  name: "comfyui-multisubject.NoteCodeContrast",
  setup() {
    addStyle("msp-note-code-contrast", NOTE_CODE_CSS);
  },
});
