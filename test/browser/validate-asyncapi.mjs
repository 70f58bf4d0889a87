// Validates docs/asyncapi.yaml with the AsyncAPI initiative's own parser
// (the spec's JSON Schema and its rules). make browser runs it; a file that
// does not validate fails the build. Usage: node validate-asyncapi.mjs FILE
import { Parser, fromFile } from '@asyncapi/parser';

const file = process.argv[2];
if (!file) {
  console.error('usage: node validate-asyncapi.mjs docs/asyncapi.yaml');
  process.exit(2);
}
const { document, diagnostics } = await fromFile(new Parser(), file).parse();
const errors = diagnostics.filter((d) => d.severity === 0);
for (const d of errors) {
  console.error(`asyncapi: ${file}: ${d.code}: ${d.message} at ${JSON.stringify(d.path)}`);
}
if (!document || errors.length > 0) {
  console.error(`asyncapi: ${file} is not a valid AsyncAPI document`);
  process.exit(1);
}
console.log(`asyncapi: ${file} is a valid AsyncAPI ${document.version()} document`);
