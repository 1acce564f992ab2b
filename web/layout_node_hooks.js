// Glue between the editor and the node's widgets that must work in both node renderers:
// the classic LiteGraph canvas and Nodes 2.0 (Vue nodes, `LiteGraph.vueNodesMode`).

/** True while the frontend draws nodes as Vue components (Nodes 2.0). */
export function vueNodesMode() {
  return !!window.LiteGraph?.vueNodesMode;
}

/** Run `callback` after the object's own method `property` (kept as it was). */
export function chainCallback(object, property, callback) {
  const original = object[property];
  object[property] = function (...args) {
    const r = original?.apply(this, args);
    callback.apply(this, args);
    return r;
  };
}

/** Call onChange after every assignment that changes widget.value (programmatic sets skip widget callbacks). */
export function watchValue(widget, onChange) {
  let owner = widget;
  let descriptor;
  while (owner && !(descriptor = Object.getOwnPropertyDescriptor(owner, "value"))) owner = Object.getPrototypeOf(owner);
  if (!descriptor || (owner === widget && !descriptor.configurable)) return;
  let stored = descriptor.value;
  const get = descriptor.get ? function () { return descriptor.get.call(this); } : () => stored;
  const set = descriptor.get
    ? function (v) { descriptor.set?.call(this, v); }
    : (v) => { stored = v; };
  Object.defineProperty(widget, "value", {
    configurable: true,
    enumerable: true,
    get,
    set(v) {
      const before = get.call(this);
      set.call(this, v);
      if (get.call(this) !== before) onChange(v);
    },
  });
}

/**
 * Nodes 2.0 shows a widget's value from a copy it refreshes only through the widget's callback,
 * with the value the callback was called with: after a callback changed its own widget's value,
 * announce the new value once that callback has returned. Nothing to do on the LiteGraph canvas.
 */
export function publishWidgetValue(widget) {
  if (!vueNodesMode()) return;
  queueMicrotask(() => widget.callback?.(widget.value));
}
