// What every browser script shares: Debian Chromium started headless with the flags these tests use,
// opening ComfyUI's front end and waiting until it is ready, and a script's exit on failure.
// Used by check_*.js (driven by the test_*.py beside them), build_workflows.js and
// tests/integration/support/*.js.

const { chromium } = require('playwright-core');

const CHROMIUM = process.env.DLA_CHROMIUM || '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-quic', '--no-first-run', '--disable-sync',
];

function launchChromium() {
  return chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
}

// Waits until the front end has registered the server's nodes, then lets it finish its own start-up
// (settings, default workflow, extensions).
async function waitForFrontend(page) {
  await page.waitForFunction(
    () => window.app && window.app.graph && window.LiteGraph &&
      Object.keys(window.LiteGraph.registered_node_types).length > 100 &&
      window.app.vueAppReady !== false,
    null, { timeout: 90000 });
  await page.waitForTimeout(1500);
}

async function openFrontend(page, url) {
  await page.goto(url, { waitUntil: 'domcontentloaded' });
  await waitForFrontend(page);
}

// Runs a script's async main; a failure prints its stack and exits 1 (the test shows stderr).
function runMain(main) {
  main().catch((error) => {
    process.stderr.write(`${error.stack || error}\n`);
    process.exit(1);
  });
}

module.exports = { CHROMIUM, CHROMIUM_ARGS, launchChromium, waitForFrontend, openFrontend, runMain };
