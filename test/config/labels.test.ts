import t from 'tap';
import { labelKeyProblem, toLabelValue } from '../../src/config/labels.js';
import { configSchema } from '../../src/config/schema.js';

const VALUE = new RegExp(configSchema.$defs.labelValue!.pattern!, 'u');

t.test('toLabelValue turns any string into a valid label value', async (t) => {
  t.equal(toLabelValue('0.1.0+build.7'), '0.1.0-build.7');
  t.equal(toLabelValue('v1.30.2+k3s1'), 'v1.30.2-k3s1');
  t.equal(toLabelValue('already_valid-1.0'), 'already_valid-1.0');
  t.equal(toLabelValue('+-.weird ends!-'), 'weird-ends');
  t.equal(toLabelValue('ünïcode'), 'n-code');
  t.equal(toLabelValue(''), '');
  t.equal(toLabelValue('+++'), '');
  const long = `${'a'.repeat(62)}.b`;
  t.equal(toLabelValue(long), 'a'.repeat(62), 'trimmed to 63, then to a letter or digit at the end');
  t.equal(toLabelValue('x'.repeat(100)).length, 63);
});

t.test('toLabelValue output always matches the schema pattern for label values', async (t) => {
  let seed = 7;
  const rnd = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
  const chars = 'aZ09-_.+/ :é\n~';
  for (let i = 0; i < 2000; i++) {
    const s = Array.from({ length: Math.floor(rnd() * 90) }, () => chars[Math.floor(rnd() * chars.length)]).join('');
    const v = toLabelValue(s);
    if (!VALUE.test(v)) t.fail(`${JSON.stringify(s)} gave ${JSON.stringify(v)}`);
  }
  t.pass('2000 random strings');
});

t.test('labelKeyProblem: a prefix of at most 253 characters', async (t) => {
  t.equal(labelKeyProblem(`${'a'.repeat(253)}/name`), undefined);
  t.match(labelKeyProblem(`${'a'.repeat(254)}/name`), /prefix .* 254 characters; .* at most 253/);
  t.equal(labelKeyProblem('name'), undefined);
});
