// Loads workflow files into ComfyUI's real front end in headless Debian Chromium and reports, per
// workflow, everything the front end would warn a person about. Driven by test_frontend.py.
//
// usage: node check_workflows.js <server-url> <screenshot-dir> <workflow.json>[=<api.json>] ...
// prints one JSON object: {frontend_version, startup_errors, results: {<file>: {...}}}; console
// errors and uncaught page errors are collected per phase (front-end start-up, then each workflow).
//
// What is looked at, per workflow, after app.loadGraphData(ui_json) (the call that drag-and-drop
// and "Open" end in):
//   missing_node_types   node types the front end has no definition for (its own
//                        "Some Nodes Are Missing" check: type not in LiteGraph.registered_node_types)
//   dialogs / toasts     any dialog (missing nodes, missing models, load error) or warn/error toast;
//                        front ends >= 1.40 report missing nodes/models in an error overlay
//                        ([data-testid="error-overlay"]) instead of a dialog: counted as a dialog
//   bad_links            links whose output and input types the front end would not connect
//   bad_widget_values    combo values that are not among the server's options (a model file the
//                        server does not list, a sampler name that does not exist, ...)
//   nodes_with_errors    nodes flagged has_errors
//   api_prompt           app.graphToPrompt() output, for comparison with workflows/api/<name>.json

const path = require('path');
const fs = require('fs');
const { launchChromium, waitForFrontend, runMain } = require('./frontend.js');

const VIEWPORT = { width: 1920, height: 1080 };


// Everything that tells a person something is wrong with a loaded workflow: PrimeVue dialogs (front end
// 1.27: "Some Nodes Are Missing", missing models) and the error overlay of newer front ends (1.49).
const WARNING_SELECTORS = ['.p-dialog', '[data-testid="error-overlay"]'];
const CLOSE_SELECTORS = ['.p-dialog .p-dialog-close-button', '.p-dialog-header-close', '[data-testid="error-overlay-dismiss"]'];

async function closeDialogs(page) {
  await page.keyboard.press('Escape');
  await page.evaluate((selectors) => {
    for (const btn of document.querySelectorAll(selectors.join(', '))) btn.click();
  }, CLOSE_SELECTORS);
  await page.waitForTimeout(200);
}

async function frontendVersion(page) {
  // Both 1.27 and 1.49 set this global at start-up (1.27 also logs "ComfyUI Front-end version: X").
  return await page.evaluate(() => window.__COMFYUI_FRONTEND_VERSION__ ?? null);
}

async function inspectWorkflow(page, uiJson) {
  return await page.evaluate(async ([graphData, warningSelectors]) => {
    const registered = window.LiteGraph.registered_node_types;
    const missing = graphData.nodes.filter((n) => !(n.type in registered)).map((n) => n.type);
    // The options are 1.27's (1.49 ignores them and always surfaces missing nodes in its error overlay).
    await window.app.loadGraphData(graphData, true, true, null, {
      showMissingNodesDialog: true, showMissingModelsDialog: true,
    });
    await new Promise((resolve) => setTimeout(resolve, 1500));
    const graph = window.app.graph;
    const badLinks = [];
    for (const link of Object.values(graph.links ?? {})) {
      if (!link) continue;
      const origin = graph.getNodeById(link.origin_id);
      const target = graph.getNodeById(link.target_id);
      const out = origin?.outputs?.[link.origin_slot];
      const inp = target?.inputs?.[link.target_slot];
      if (!out || !inp || !window.LiteGraph.isValidConnection(out.type, inp.type)) {
        badLinks.push({ id: link.id, from: origin?.type, output: out?.type, to: target?.type, input: inp?.type });
      }
    }
    const badWidgetValues = [];
    for (const node of graph.nodes) {
      for (const widget of node.widgets ?? []) {
        const values = widget.options?.values;
        if (widget.type === 'combo' && Array.isArray(values) && !values.includes(widget.value)) {
          badWidgetValues.push({ node: node.id, type: node.type, widget: widget.name, value: widget.value, options: values.slice(0, 20) });
        }
      }
    }
    const text = (el) => (el.innerText || '').trim().slice(0, 2000);
    const dialogs = [...document.querySelectorAll(warningSelectors.join(', '))].filter((el) => el.offsetParent !== null).map(text);
    const toasts = [...document.querySelectorAll('.p-toast-message-warn, .p-toast-message-error')].map(text);
    const prompt = await window.app.graphToPrompt();
    return {
      node_count: graph.nodes.length,
      link_count: Object.values(graph.links ?? {}).filter(Boolean).length,
      missing_node_types: missing,
      nodes_with_errors: graph.nodes.filter((n) => n.has_errors).map((n) => `${n.id}:${n.type}`),
      bad_links: badLinks,
      bad_widget_values: badWidgetValues,
      dialogs,
      toasts,
      api_prompt: prompt.output,
    };
  }, [uiJson, WARNING_SELECTORS]);
}

async function main() {
  const [url, screenshotDir, ...workflowArgs] = process.argv.slice(2);
  fs.mkdirSync(screenshotDir, { recursive: true });
  const browser = await launchChromium();
  const report = { frontend_version: null, startup_errors: [], results: {} };
  let errors = report.startup_errors; // where console errors go right now
  try {
    const page = await browser.newPage({ viewport: VIEWPORT });
    page.on('console', (msg) => {
      const line = msg.text();
      const version = line.match(/ComfyUI Front-end version: (\S+)/);
      if (version) report.frontend_version = version[1];
      // 404s for optional front-end resources (user workflows, templates' index) are normal
      // on a fresh user directory; everything else is recorded.
      if (msg.type() === 'error' && !line.includes('status of 404')) errors.push(line);
    });
    page.on('pageerror', (error) => errors.push(`pageerror: ${error.message} ${(error.stack || '').split('\n').slice(0, 4).join(' | ')}`));
    await page.goto(url, { waitUntil: 'domcontentloaded' });
    await waitForFrontend(page);
    report.frontend_version = (await frontendVersion(page)) ?? report.frontend_version;
    await closeDialogs(page);
    for (const arg of workflowArgs) {
      const file = arg.split('=')[0];
      const name = path.basename(file, '.json');
      const uiJson = JSON.parse(fs.readFileSync(file, 'utf8'));
      errors = [];
      const result = await inspectWorkflow(page, uiJson);
      result.console_errors = errors;
      // Fit the whole graph into the view before the screenshot.
      await page.evaluate(() => {
        window.app.canvas.deselectAll?.();
        const nodes = window.app.graph.nodes;
        if (window.app.canvas.ds?.fitToBounds && nodes.length) {
          const xs = nodes.flatMap((n) => [n.pos[0], n.pos[0] + n.size[0]]);
          const ys = nodes.flatMap((n) => [n.pos[1] - 40, n.pos[1] + n.size[1]]);
          const groups = window.app.graph.groups ?? [];
          for (const g of groups) { xs.push(g.pos[0], g.pos[0] + g.size[0]); ys.push(g.pos[1], g.pos[1] + g.size[1]); }
          const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
          window.app.canvas.ds.fitToBounds([x0 - 20, y0 - 20, x1 - x0 + 40, y1 - y0 + 40], { zoom: 0.95 });
        }
        window.app.canvas.setDirty(true, true);
      });
      await page.waitForTimeout(500);
      const screenshot = path.join(screenshotDir, `${name}.png`);
      await page.screenshot({ path: screenshot });
      result.screenshot = screenshot;
      await closeDialogs(page);
      report.results[file] = result;
    }
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(report));
}

runMain(main);
