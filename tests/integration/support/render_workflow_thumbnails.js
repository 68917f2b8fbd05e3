// Draws the thumbnail ComfyUI's template browser shows beside each shipped workflow:
// workflows/<name>.jpg, a picture of the workflow's graph as the real front end draws it.
// (Only tiny random-weight models exist where the pack is built and tested, so a picture of what a
// workflow makes would be noise; the graph is what the thumbnail honestly shows.)
//
// usage (a test server: PYTHONPATH=tests/lib python -m dla_harness.server):
//   node tests/integration/support/render_workflow_thumbnails.js http://127.0.0.1:PORT [name ...]
// writes workflows/<name>.jpg for every UI workflow (or the named ones).

const fs = require('fs');
const path = require('path');
const { launchChromium, openFrontend, runMain } = require('../browser/frontend.js');

const REPO = path.resolve(__dirname, '..', '..', '..');
const WORKFLOWS = path.join(REPO, 'workflows');
// The thumbnail: 1024 x 768 pixels (4:3, like the cards of ComfyUI's template browser), drawn on a page
// twice that size at device scale 1/2 so the graph is framed at a zoom where the front end still draws
// titles and widgets (it switches to low-quality boxes below about 60 %).
const WIDTH = 2048;
const HEIGHT = 1536;
const DEVICE_SCALE = 0.5;
const JPEG_QUALITY = 82;
// Front-end settings for a clean picture: no canvas info text, no canvas menu or minimap; both versions.
const SETTINGS = {
  'Comfy.Graph.CanvasInfo': false,
  'Comfy.Graph.CanvasMenu': false,
  'Comfy.Minimap.Visible': false,
  'LiteGraph.Canvas.MinFontSizeForLOD': 0,  // full detail at every zoom (front end >= 1.2x)
};

async function openCleanCanvas(browser, url) {
  const page = await browser.newPage({ viewport: { width: WIDTH, height: HEIGHT }, deviceScaleFactor: DEVICE_SCALE });
  await openFrontend(page, url);
  await page.keyboard.press('Escape');
  await page.evaluate(async (settings) => {
    const store = window.app.extensionManager?.setting;
    for (const [id, value] of Object.entries(settings)) {
      if (store?.set) await store.set(id, value);
      else await window.app.ui.settings.setSettingValueAsync(id, value);
    }
    // Focus mode hides the menus, tabs and sidebars: the canvas fills the page.
    await window.app.extensionManager.command.execute('Workspace.ToggleFocusMode');
  }, SETTINGS);
  await page.waitForTimeout(500);
  return page;
}

// Loads one workflow and frames every node in the canvas.
async function showWorkflow(page, workflow) {
  await page.evaluate(async (graph) => {
    await window.app.loadGraphData(graph, true, true, null);
  }, workflow);
  await page.waitForTimeout(500);
  return page.evaluate(() => {
    const canvas = window.app.canvas;
    const nodes = window.app.graph._nodes;
    let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
    for (const node of nodes) {
      const titleHeight = window.LiteGraph.NODE_TITLE_HEIGHT;
      x0 = Math.min(x0, node.pos[0]);
      y0 = Math.min(y0, node.pos[1] - titleHeight);
      x1 = Math.max(x1, node.pos[0] + node.size[0]);
      y1 = Math.max(y1, node.pos[1] + node.size[1]);
    }
    for (const group of window.app.graph._groups || []) {
      const [gx, gy, gw, gh] = group._bounding || group.bounding;
      x0 = Math.min(x0, gx); y0 = Math.min(y0, gy); x1 = Math.max(x1, gx + gw); y1 = Math.max(y1, gy + gh);
    }
    const rect = canvas.canvas.getBoundingClientRect();
    const margin = 24;
    const scale = Math.min((rect.width - 2 * margin) / (x1 - x0), (rect.height - 2 * margin) / (y1 - y0));
    canvas.ds.scale = scale;
    canvas.ds.offset = [
      (rect.width / scale - (x1 - x0)) / 2 - x0,
      (rect.height / scale - (y1 - y0)) / 2 - y0,
    ];
    canvas.deselectAll?.();
    canvas.setDirty(true, true);
    canvas.draw(true, true);
    return { nodes: nodes.length, rect: { x: rect.left, y: rect.top, width: rect.width, height: rect.height } };
  });
}

async function main() {
  const [url, ...names] = process.argv.slice(2);
  if (!url) throw new Error('usage: node render_workflow_thumbnails.js <server-url> [name ...]');
  const wanted = names.length ? names : fs.readdirSync(WORKFLOWS).filter((f) => f.endsWith('.json')).map((f) => f.slice(0, -5)).sort();
  const browser = await launchChromium();
  try {
    const page = await openCleanCanvas(browser, url);
    for (const name of wanted) {
      const workflow = JSON.parse(fs.readFileSync(path.join(WORKFLOWS, `${name}.json`), 'utf8'));
      const shown = await showWorkflow(page, workflow);
      await page.waitForTimeout(300);
      const out = path.join(WORKFLOWS, `${name}.jpg`);
      await page.screenshot({ path: out, type: 'jpeg', quality: JPEG_QUALITY, clip: shown.rect });
      process.stdout.write(`wrote workflows/${name}.jpg (${shown.nodes} nodes)\n`);
    }
  } finally {
    await browser.close();
  }
}

runMain(main);
