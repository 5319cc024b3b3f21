// Writes a TypeScript module that holds a Grafana dashboard JSON as typed constants, for
// `tsc --noEmit` to check against Grafana's own dashboard schema (the `@grafana/schema`
// package: the types Grafana generates from its CUE schema):
//   - the whole dashboard as a `Dashboard` (top level, templating, annotations, every panel's
//     frame: gridPos, datasource, targets, fieldConfig);
//   - every panel once more with its plugin's own `Options` and field config (`timeseries`,
//     `stat`, `bargauge`, `state-timeline`, rows), so a misspelt or mistyped option fails too.
// The JSON is written inline as object literals, so TypeScript checks literal values against
// their unions and refuses properties the schema does not have. String enums of the schema are
// compared by value (`Loose`): JSON cannot name a TypeScript enum member.
//
// Usage: node schema-check.mjs <dashboard.json> <out.ts>

import { readFileSync, writeFileSync } from 'node:fs';

const [, , input, output] = process.argv;
if (!input || !output) {
  console.error('usage: node schema-check.mjs <dashboard.json> <out.ts>');
  process.exit(2);
}
const dashboard = JSON.parse(readFileSync(input, 'utf8'));

const composable = (dir, name) =>
  `@grafana/schema/dist/esm/raw/composable/${dir}/panelcfg/x/${name}PanelCfg_types.gen`;
// Panel plugin id → the namespace holding its `Options` (and `FieldConfig`, when it has one).
const plugins = {
  timeseries: { ns: 'TimeSeries', module: composable('timeseries', 'TimeSeries'), fieldConfig: true },
  stat: { ns: 'Stat', module: composable('stat', 'Stat'), fieldConfig: false },
  bargauge: { ns: 'BarGauge', module: composable('bargauge', 'BarGauge'), fieldConfig: false },
  'state-timeline': {
    ns: 'StateTimeline',
    module: composable('statetimeline', 'StateTimeline'),
    fieldConfig: true,
  },
};

const lines = [
  "import type { Dashboard, Panel, RowPanel } from '@grafana/schema';",
  ...Object.values(plugins).map((p) => `import type * as ${p.ns} from '${p.module}';`),
  '',
  '// String enums by value; everything else as the schema says.',
  'type Loose<T> = T extends string',
  '  ? `${T}`',
  '  : T extends readonly (infer E)[]',
  '    ? Loose<E>[]',
  '    : T extends object',
  '      ? { [K in keyof T]: Loose<T[K]> }',
  '      : T;',
  "type Typed<O, F> = Loose<Omit<Panel<Record<string, unknown>, F>, 'options'> & { options: O }>;",
  '',
  `export const dashboard: Loose<Dashboard> = ${JSON.stringify(dashboard, null, 2)};`,
  '',
];

let failed = false;
for (const [i, panel] of (dashboard.panels ?? []).entries()) {
  const name = `panel_${i}_${String(panel.id ?? 'noid').replace(/\W/g, '_')}`;
  let type;
  if (panel.type === 'row') {
    type = 'Loose<RowPanel>';
  } else if (plugins[panel.type]) {
    const p = plugins[panel.type];
    type = `Typed<${p.ns}.Options, ${p.fieldConfig ? `${p.ns}.FieldConfig` : 'Record<string, unknown>'}>`;
  } else {
    console.error(`panel ${panel.id} (${panel.title}): no schema known for type ${panel.type}`);
    failed = true;
    continue;
  }
  lines.push(`export const ${name}: ${type} = ${JSON.stringify(panel, null, 2)};`, '');
}
writeFileSync(output, lines.join('\n'));
process.exit(failed ? 1 : 0);
