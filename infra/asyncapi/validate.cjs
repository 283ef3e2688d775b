// Validates AsyncAPI documents with the official parser (one node start for all of them).
// Prints one JSON line per diagnostic and one verdict line per file; exits 1 if any file has errors.
// NODE_PATH points at the parser that `make asyncapi-parser` installed under .local/.
const fs = require("node:fs");
const { Parser, DiagnosticSeverity } = require("@asyncapi/parser");

async function main(files) {
  if (!files.length) {
    console.error("usage: node validate.cjs FILE...");
    process.exit(2);
  }
  const parser = new Parser();
  let failed = false;
  for (const file of files) {
    const { document, diagnostics } = await parser.parse(fs.readFileSync(file, "utf8"));
    for (const d of diagnostics) {
      const where = d.path.join(".");
      console.log(JSON.stringify({ file, severity: d.severity, code: d.code, path: where, message: d.message }));
    }
    const errors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error).length;
    const valid = Boolean(document) && errors === 0;
    failed ||= !valid;
    const channels = document ? document.channels().length : 0;
    console.log(JSON.stringify({ file, valid, errors, version: document ? document.version() : null, channels }));
  }
  process.exit(failed ? 1 : 0);
}

main(process.argv.slice(2)).catch((err) => {
  console.error(err);
  process.exit(1);
});
