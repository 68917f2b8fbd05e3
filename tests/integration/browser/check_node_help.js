// Opens one pack node's help page in ComfyUI's real front end, the way a person does, and reports what the
// panel shows. Driven by test_node_help.py.
//
// usage: node check_node_help.js <server-url> <screenshot.png> <node id> <expected text>
// prints one JSON object: {frontend_version, info_buttons, requests, panel_text, shown}
//
// The way in, on both tested front ends: add the node to an empty graph, click its title (selecting it
// shows the selection toolbox), click the toolbox's info button ([data-testid="info-button"]). Front end
// 1.27.10 then opens the node library sidebar on the node's help page, 1.49.6 the right-hand panel's "Info"
// tab; both render the Markdown fetched by NodeHelpService into `.node-help-content`.

const { launchChromium, openFrontend, runMain } = require('./frontend.js');


async function main() {
  const [url, screenshot, nodeId, expected] = process.argv.slice(2);
  const browser = await launchChromium();
  const report = { frontend_version: null, info_buttons: 0, requests: [], panel_text: '', shown: false };
  try {
    const page = await browser.newPage({ viewport: { width: 1920, height: 1080 } });
    page.on('response', (response) => {
      if (response.url().includes('/docs/')) report.requests.push(`${response.status()} ${new URL(response.url()).pathname}`);
    });
    await openFrontend(page, url);
    report.frontend_version = await page.evaluate(() => window.__COMFYUI_FRONTEND_VERSION__ ?? null);
    await page.keyboard.press('Escape');
    const title = await page.evaluate((type) => {
      window.app.graph.clear();
      const node = window.LiteGraph.createNode(type);
      node.pos = [400, 240];
      window.app.graph.add(node);
      window.app.canvas.ds.offset = [0, 0];
      window.app.canvas.ds.scale = 1;
      window.app.canvas.setDirty(true, true);
      const rect = window.app.canvas.canvas.getBoundingClientRect();
      return { x: rect.left + node.pos[0] + 60, y: rect.top + node.pos[1] - 15 };  // the title bar
    }, nodeId);
    await page.waitForTimeout(500);
    await page.mouse.click(title.x, title.y);
    const info = page.locator('[data-testid="info-button"]');
    await info.first().waitFor({ state: 'visible', timeout: 15000 });
    report.info_buttons = await info.count();
    await info.first().click();
    try {
      await page.waitForFunction(
        (text) => [...document.querySelectorAll('.node-help-content')].some((el) => el.innerText.includes(text)),
        expected, { timeout: 20000 });
      report.shown = true;
    } catch (error) {
      report.shown = false;
    }
    report.panel_text = await page.evaluate(
      () => [...document.querySelectorAll('.node-help-content')].map((el) => el.innerText).join('\n---\n'));
    await page.screenshot({ path: screenshot });
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(report));
}

runMain(main);
