// Interactive box canvas for "Draw Layout Box" (MSP_DrawLayoutBox).
//
// Every .js file under web/ is loaded by the frontend as an extension module; this one,
// node_search_words.js (the pack's search words) and note_code_contrast.js (readable inline code in
// notes) register extensions. The layout_*.js files are
// side-effect-free helpers this one imports:
//   layout_boxes.js      the boxes as data (parse / serialize / presets / label cap / geometry)
//   layout_drawing.js    drawing on the 2D canvas (bounded text fitting)
//   layout_json_view.js  the JSON text view
//   layout_dom.js        DOM helpers and shared styles
//   layout_node_hooks.js widget glue for both node renderers (LiteGraph canvas, Nodes 2.0)
//   layout_interaction.js pointer and keyboard editing on the canvas
//   layout_editor.js     the editor widget itself

import { app } from "../../scripts/app.js";
import { CUSTOM, isPreset } from "./layout_boxes.js";
import { LayoutEditor } from "./layout_editor.js";
import { chainCallback } from "./layout_node_hooks.js";

export { PALETTE, PRESETS } from "./layout_boxes.js";

const NODE_ID = "MSP_DrawLayoutBox";

app.registerExtension({
  name: "comfyui-multisubject.LayoutBoxCanvas",

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_ID) return;

    chainCallback(nodeType.prototype, "onNodeCreated", function () {
      this.mspLayout = new LayoutEditor(this);
      this.setSize([Math.max(this.size[0], 460), Math.max(this.size[1], 640)]);
    });

    chainCallback(nodeType.prototype, "onConfigure", function () {
      const editor = this.mspLayout;
      if (!editor) return;
      editor.sync(true);
      editor.takeOverStaleEditor();
      // A workflow saved with a preset: its boxes become the drawn boxes (same result when run).
      const preset = editor.presetWidget?.value;
      if (isPreset(preset) && !editor.isLinked("preset")) {
        editor.presetWidget.value = CUSTOM;
        editor.applyPreset(preset, { track: false });
      }
    });

    chainCallback(nodeType.prototype, "onExecuted", function (message) {
      this.mspLayout?.onExecuted(message);
    });

    chainCallback(nodeType.prototype, "onConnectionsChange", function () {
      this.mspLayout?.refreshPanel();
      this.mspLayout?.render();
    });

    chainCallback(nodeType.prototype, "onSelected", function () {
      this.mspLayout?.showSelected(true);
    });

    chainCallback(nodeType.prototype, "onDeselected", function () {
      this.mspLayout?.showSelected(false);
    });

    chainCallback(nodeType.prototype, "onRemoved", function () {
      this.mspLayout?.dispose();
    });
  },

  loadedGraphNode(node) {
    node.mspLayout?.sync(true);
    node.mspLayout?.takeOverStaleEditor();
  },
});
