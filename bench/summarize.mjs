// Summaries of the load generator's JSON results (used by bench/run.sh).
//
//   node summarize.mjs DIR                 table of medians (min–max) per scenario and server
//   node summarize.mjs --line FILE         one line for one run
//   node summarize.mjs --passes FILE P99   exit 0 when the run had zero loss, no errors,
//                                          no disconnects, every message acked, p99 <= P99 ms

import { readFileSync, readdirSync } from 'node:fs';
import { basename, join } from 'node:path';

const get = (o, path) => path.split('.').reduce((v, k) => (v == null ? undefined : v[k]), o);

function load(file) {
  const j = JSON.parse(readFileSync(file, 'utf8'));
  const m = basename(file).match(/^\d+-(.*)-([a-z]+)\.json$/);
  j.tag = m ? m[1] : j.scenario;
  j.server = j.label || (m ? m[2] : '?');
  return j;
}

function failures(j, p99) {
  const why = [];
  if (j.connect_failures) why.push(`${j.connect_failures} connect failures`);
  if (j.disconnects) why.push(`${j.disconnects} disconnects`);
  if (j.lost_deliveries) why.push(`${j.lost_deliveries} lost`);
  if (j.unacked) why.push(`${j.unacked} unacked`);
  const errs = Object.values(j.ack_errors ?? {}).reduce((a, b) => a + b, 0);
  if (errs) why.push(`${errs} ack errors`);
  const p = get(j, 'latency.p99_ms');
  if (p99 !== undefined && !(p <= p99)) why.push(`p99 ${p} ms > ${p99}`);
  return why;
}

function line(j) {
  const load = (j.loadavg_start ?? [])[0];
  if (j.scenario.endsWith('idle')) {
    return `${j.server} idle: ${j.connected} conns in ${j.connect_secs}s, ` +
      `${((j.server_rss_bytes_per_conn ?? 0) / 1024).toFixed(1)} KiB/conn, ` +
      `server cpu ${get(j, 'connect_phase.server_cpu_cores')} cores while connecting, ` +
      `disconnects ${j.disconnects}, load ${load}, steal ${get(j, 'hold_phase.steal_pct')}%`;
  }
  return `${j.server} ${j.tag}: offered ${get(j, 'params.offered_msgs_per_s')} msg/s, ` +
    `acked ${j.msgs_acked_per_s}/s, delivered ${j.deliveries_per_s}/s, ` +
    `p50 ${get(j, 'latency.p50_ms')} p99 ${get(j, 'latency.p99_ms')} max ${get(j, 'latency.max_ms')} ms, ` +
    `lost ${j.lost_deliveries}/${j.expected_deliveries}, ` +
    `cpu server ${get(j, 'usage.server_cpu_cores')} loadgen ${get(j, 'usage.loadgen_cpu_cores')}, load ${load}, ` +
    `steal ${get(j, 'usage.steal_pct')}%` +
    (failures(j).length ? ` [${failures(j).join(', ')}]` : '');
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
};
const fmt = (x) => (Math.abs(x) >= 100 ? Math.round(x).toString() : (+x.toPrecision(3)).toString());
const cell = (xs) => {
  const v = xs.filter((x) => typeof x === 'number');
  if (!v.length) return '–';
  return v.length === 1 ? fmt(v[0]) : `${fmt(median(v))} (${fmt(Math.min(...v))}–${fmt(Math.max(...v))})`;
};

const COLUMNS = {
  idle: [
    ['conns', 'connected'],
    ['connect s', 'connect_secs'],
    ['server KiB/conn', (j) => j.server_rss_bytes_per_conn / 1024],
    ['server RSS MiB', (j) => j.server_rss_kb_after / 1024],
    ['srv cpu (connect)', 'connect_phase.server_cpu_cores'],
    ['lg cpu (connect)', 'connect_phase.loadgen_cpu_cores'],
    ['srv cpu (idle)', 'hold_phase.server_cpu_cores'],
    ['disconnects', 'disconnects'],
    ['load', (j) => j.loadavg_start?.[0]],
    ['steal %', 'hold_phase.steal_pct'],
  ],
  traffic: [
    ['offered msg/s', 'params.offered_msgs_per_s'],
    ['acked msg/s', 'msgs_acked_per_s'],
    ['deliveries/s', 'deliveries_per_s'],
    ['p50 ms', 'latency.p50_ms'],
    ['p99 ms', 'latency.p99_ms'],
    ['max ms', 'latency.max_ms'],
    ['lost', 'lost_deliveries'],
    ['srv cpu', 'usage.server_cpu_cores'],
    ['lg cpu', 'usage.loadgen_cpu_cores'],
    ['load', (j) => j.loadavg_start?.[0]],
    ['steal %', 'usage.steal_pct'],
  ],
};

function table(dir) {
  const runs = readdirSync(dir)
    .filter((f) => /^\d+-.*\.json$/.test(f))
    .sort()
    .map((f) => load(join(dir, f)));
  const groups = new Map();
  for (const j of runs) {
    const key = `${j.tag}\u0000${j.server}`;
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(j);
  }
  const tags = [...new Set(runs.map((j) => j.tag))];
  const out = [];
  for (const tag of tags) {
    const isSearch = tag.endsWith('-search');
    const kind = tag.endsWith('idle') ? 'idle' : 'traffic';
    const cols = COLUMNS[kind];
    out.push('', `## ${tag}${isSearch ? ' (every run)' : ' (median, min–max)'}`, '');
    const head = ['server', 'runs', ...cols.map((c) => c[0])];
    if (isSearch) head.push('verdict');
    const rows = [head];
    const medians = []; // [server, per column: its runs' values]
    for (const [key, js] of groups) {
      if (!key.startsWith(`${tag}\u0000`)) continue;
      const val = (j, c) => (typeof c[1] === 'function' ? c[1](j) : get(j, c[1]));
      if (isSearch) {
        for (const j of js) {
          const p99 = j.scenario === 'dm' ? 20 : 50;
          const why = failures(j, p99);
          rows.push([j.server, '1', ...cols.map((c) => cell([val(j, c)])), why.length ? why.join('; ') : 'pass']);
        }
      } else {
        rows.push([js[0].server, String(js.length), ...cols.map((c) => cell(js.map((j) => val(j, c))))]);
        medians.push([js[0].server, cols.map((c) => js.map((j) => val(j, c)).filter((x) => typeof x === 'number'))]);
      }
    }
    // The first server against each other one: the ratio of their medians, per column.
    for (const [other, vals] of medians.slice(1)) {
      const [first, firstVals] = medians[0];
      rows.push([`${first}/${other}`, '', ...cols.map((_, i) => {
        const [a, b] = [firstVals[i], vals[i]];
        return a.length && b.length && median(b) !== 0 ? `${fmt(median(a) / median(b))}x` : '–';
      })]);
    }
    const widths = head.map((_, i) => Math.max(...rows.map((r) => r[i].length)));
    rows.forEach((r, n) => {
      out.push('| ' + r.map((c, i) => c.padEnd(widths[i])).join(' | ') + ' |');
      if (n === 0) out.push('|' + widths.map((w) => '-'.repeat(w + 2)).join('|') + '|');
    });
  }
  return out.join('\n');
}

const args = process.argv.slice(2);
if (args[0] === '--line') {
  console.log(line(load(args[1])));
} else if (args[0] === '--passes') {
  const why = failures(load(args[1]), Number(args[2]));
  if (why.length) {
    console.error(`fails: ${why.join(', ')}`);
    process.exit(1);
  }
} else if (args[0]) {
  console.log(table(args[0]));
} else {
  console.error('usage: summarize.mjs DIR | --line FILE | --passes FILE P99_MS');
  process.exit(2);
}
