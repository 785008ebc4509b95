// The reference GPT-2 encoder's throughput (npm gpt-3-encoder, one thread) on the same text as
// `ptrain bench tokenizer`: node scripts/bench/tokenizer-ref.js FILE... (NODE_PATH must hold
// gpt-3-encoder). Its encode() concatenates arrays per pre-token (quadratic in a long text), so
// the text is encoded a line at a time (the cache of words is shared across lines); ids may
// differ from one whole-text pass where a whitespace run spans a line end.
'use strict';
const fs = require('fs');
const {encode} = require('gpt-3-encoder');
const text = process.argv.slice(2).map(f => fs.readFileSync(f, 'utf8')).join('');
const bytes = Buffer.byteLength(text, 'utf8');
const repeats = Number(process.env.REPEATS || 3);
const lines = text.split(/(?<=\n)/);
const rates = [], cpuRates = [];
let tokens = 0;
for (let r = 0; r < repeats; ++r) {
  const t0 = process.hrtime.bigint();
  const c0 = process.cpuUsage();
  tokens = 0;
  for (const l of lines) tokens += encode(l).length;
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  const c = process.cpuUsage(c0);
  rates.push(bytes / 1e6 / s);
  cpuRates.push(bytes / 1e6 / ((c.user + c.system) / 1e6));
}
rates.sort((a, b) => a - b);
cpuRates.sort((a, b) => a - b);
console.log(`reference gpt-3-encoder (node ${process.version}): ${(bytes / 1e6).toFixed(2)} MB, ` +
            `${tokens} tokens, median ${rates[rates.length >> 1].toFixed(2)} MB/s over ${repeats} ` +
            `passes (min ${rates[0].toFixed(2)}, max ${rates[rates.length - 1].toFixed(2)}); ` +
            `per CPU second ${cpuRates[cpuRates.length >> 1].toFixed(2)} MB/s (process: GC included)`);
