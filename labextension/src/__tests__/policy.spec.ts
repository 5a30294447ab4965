import schema from '../policy.schema.json';
import {
  describeValue,
  fieldAccepts,
  fieldLimit,
  IPolicyField,
  policyBody,
  policyFields,
  PolicyModel,
  policyUrl
} from '../policy';
import { IConfig } from '../types';
import { fakeApi, settle } from './fixtures';

const CONFIG: IConfig = {
  default_policy: {},
  max_memory_mb: 8192,
  allowed_devices: [0],
  force_memory_growth: true,
  allow_user_policies: true,
  forced_policy: {},
  max_threads: null,
  placement_strategy: 'most_free_memory',
  backend: 'simulated',
  sample_interval: 1,
  history_seconds: 3600,
  nvml_budget: 0.02,
  policy_store_path: '/srv/jupyter/tfgpu/policies.json',
  provisioner: { name: 'tfgpu-provisioner', default: true, reason: null },
  hard_caps: 'off',
  enforcement: {
    action: 'off',
    grace: 30,
    idle_timeout: 0,
    idle_min_memory_mb: 256,
    idle_action: 'restart',
    max_actions_per_hour: 3
  },
  caps_file: null,
  problems: []
};

const byName = (fields: IPolicyField[], name: string) =>
  fields.find(f => f.name === name) as IPolicyField;

describe('policyFields', () => {
  it('reads every field of the shipped policy schema', () => {
    const fields = policyFields(schema);
    expect(fields.map(f => f.name)).toEqual(Object.keys(schema.properties));
    expect(byName(fields, 'memory_growth').kind).toBe('boolean');
    expect(byName(fields, 'memory_limit_mb')).toMatchObject({
      kind: 'integer',
      title: 'Memory limit (MiB)',
      minimum: 1
    });
    expect(byName(fields, 'allocator')).toMatchObject({
      kind: 'enum',
      options: ['default', 'cuda_malloc_async']
    });
    expect(byName(fields, 'devices').kind).toBe('devices');
  });

  it('makes a new schema field appear without new UI code', () => {
    const fields = policyFields({
      properties: {
        deterministic: { type: ['boolean', 'null'], title: 'Deterministic ops' },
        threads: { type: ['integer', 'null'], minimum: 1 },
        tags: { type: ['array', 'null'], items: { type: 'string' } },
        mode: {
          anyOf: [
            { type: 'null' },
            { const: 'auto' },
            { type: 'array', items: { type: 'integer' } }
          ]
        },
        nested: { type: 'object' }
      }
    });
    expect(fields.map(f => [f.name, f.kind, f.title])).toEqual([
      ['deterministic', 'boolean', 'Deterministic ops'],
      ['threads', 'integer', 'threads'],
      ['tags', 'list', 'tags'],
      ['mode', 'devices', 'mode']
    ]);
    expect(byName(fields, 'mode').options).toEqual(['auto']);
  });
});

/** A property's alternatives: one schema, or each schema of its `anyOf`/`oneOf`. */
const branchesOf = (prop: any): any[] => prop.anyOf ?? prop.oneOf ?? [prop];
/** The JSON types a schema names, null left out. */
const typesOf = (s: any): string[] => [s.type ?? []].flat().filter((t: string) => t !== 'null');
/** A value of each JSON type, to offer a field typed otherwise. */
const OF_TYPE: Record<string, unknown> = {
  boolean: true,
  integer: 7,
  number: 0.5,
  string: 'text',
  array: ['text'],
  object: {}
};

/**
 * Every value the schema allows that the test can name (enum values, consts, bounds, a value of
 * each type), and values just outside (a string not in an enum, past a bound, another type).
 */
function walk(schema: { properties: Record<string, any> }): {
  name: string;
  allowed: unknown[];
  refused: unknown[];
}[] {
  return Object.entries(schema.properties).map(([name, prop]) => {
    const allowed: unknown[] = [null];
    const refused: unknown[] = [{}];
    if (Array.isArray(prop.enum)) {
      allowed.push(...prop.enum);
      refused.push(`not ${prop.enum.join(' or ')}`, 1.5, true);
    }
    for (const branch of branchesOf(prop)) {
      if ('const' in branch) {
        allowed.push(branch.const);
        refused.push(`not ${branch.const}`);
      }
      const types = typesOf(branch);
      if (Array.isArray(prop.enum)) {
        continue; // its values are the enum's
      }
      for (const other of Object.keys(OF_TYPE).filter(t => !types.includes(t))) {
        if (!(other === 'number' && types.includes('integer'))) {
          refused.push(OF_TYPE[other]);
        }
      }
      if (types.includes('boolean')) {
        allowed.push(true, false);
      }
      if (types.includes('integer') || types.includes('number')) {
        const { minimum = -1000, maximum = 1000 } = branch;
        allowed.push(minimum, maximum);
        refused.push(minimum - 1, maximum + 1);
        if (types.includes('integer')) {
          refused.push(minimum + 0.5);
        }
      }
      if (types.includes('string') && branch.pattern === undefined) {
        allowed.push('text');
      }
      if (types.includes('array')) {
        allowed.push([]);
        for (const item of branchesOf(branch.items ?? {})) {
          const itemTypes = typesOf(item);
          if (itemTypes.includes('integer')) {
            const { minimum = 0, maximum = 1000 } = item;
            allowed.push([minimum], [maximum], [minimum, maximum]);
            refused.push([minimum - 1], [maximum + 1], [minimum + 0.5]);
            if (branch.uniqueItems) {
              refused.push([minimum, minimum]);
            }
          }
          if (itemTypes.includes('string') && item.pattern !== undefined) {
            refused.push(['does not match']);
          }
        }
        if (branch.maxItems !== undefined) {
          refused.push(Array.from({ length: branch.maxItems + 1 }, (_, i) => `GPU-${i}`));
        }
      }
    }
    return { name, allowed, refused };
  });
}

describe('fieldAccepts, walking the policy schema', () => {
  const fields = policyFields(schema);

  it('gives the form a field for every property of the schema', () => {
    expect(fields.map(f => f.name)).toEqual(Object.keys(schema.properties));
  });

  it.each(walk(schema).map(w => [w.name, w]))(
    '%s: accepts every value the schema allows, refuses a value outside each',
    (name, w) => {
      const field = byName(fields, name as string);
      for (const value of w.allowed) {
        expect([name, value, fieldAccepts(field, value)]).toEqual([name, value, true]);
      }
      for (const value of w.refused) {
        expect([name, value, fieldAccepts(field, value)]).toEqual([name, value, false]);
      }
    }
  );

  it('accepts a value added to the schema, with no change to the lab', () => {
    // Given the schema with one more value in every enum and one more named mode
    const grown = JSON.parse(JSON.stringify(schema));
    for (const prop of Object.values<any>(grown.properties)) {
      if (Array.isArray(prop.enum)) {
        prop.enum.splice(prop.enum.length - 1, 0, 'added_value');
      }
      for (const branch of prop.anyOf ?? []) {
        if ('const' in branch) {
          prop.anyOf.push({ const: 'added_mode' });
          break;
        }
      }
    }
    // Then the form offers it, and a value outside is still refused
    for (const w of walk(grown)) {
      const field = byName(policyFields(grown), w.name);
      expect(w.allowed.filter(v => !fieldAccepts(field, v))).toEqual([]);
      expect(w.refused.filter(v => fieldAccepts(field, v))).toEqual([]);
    }
    const allocator = byName(policyFields(grown), 'allocator');
    expect(allocator.options).toContain('added_value');
    expect(byName(policyFields(grown), 'devices').options).toContain('added_mode');
  });

  it('reads the devices items: GPU indices within bounds, names by their pattern', () => {
    const devices = byName(fields, 'devices');
    expect(fieldAccepts(devices, [0, 'GPU-8f2a', 'MIG-1c2d/0/1'])).toBe(true);
    expect(fieldAccepts(devices, ['gpu0'])).toBe(false);
    expect(fieldAccepts(devices, 'auto')).toBe(true);
  });
});

describe('policy helpers', () => {
  const fields = policyFields(schema);

  it('turn the admin caps into limits on the inputs', () => {
    expect(fieldLimit(byName(fields, 'memory_limit_mb'), CONFIG)).toMatchObject({ maximum: 8192 });
    expect(fieldLimit(byName(fields, 'devices'), CONFIG)).toMatchObject({ allowed: [0] });
    expect(fieldLimit(byName(fields, 'memory_growth'), CONFIG)).toMatchObject({ forced: true });
    expect(fieldLimit(byName(fields, 'allocator'), CONFIG)).toEqual({});
    expect(fieldLimit(byName(fields, 'memory_limit_mb'), null)).toEqual({});
  });

  it('leave unset fields out of the body', () => {
    expect(
      policyBody({ memory_growth: false, memory_limit_mb: null, allocator: '', devices: [] })
    ).toEqual({
      memory_growth: false,
      devices: []
    });
  });

  it('describe values in words', () => {
    const devices = byName(fields, 'devices');
    expect(describeValue(devices, null)).toBe('every allowed GPU');
    expect(describeValue(devices, [])).toBe('CPU only');
    expect(describeValue(devices, [0, 1])).toBe('GPU 0, 1');
    expect(describeValue(byName(fields, 'memory_limit_mb'), 1024)).toBe('1024 MiB');
    expect(describeValue(byName(fields, 'memory_growth'), true)).toBe('on');
  });

  it('encode each path segment', () => {
    expect(policyUrl('my dir/a#b.ipynb')).toBe('policies/my%20dir/a%23b.ipynb');
  });
});

describe('PolicyModel', () => {
  const description = (notebook: string) => ({
    notebook,
    policy: null,
    effective: { sources: {} }
  });

  it('loads the config once and the current notebook policy', async () => {
    const api = fakeApi({ config: CONFIG, policies: (url: string) => description(url) });
    const model = new PolicyModel(api);
    await model.setPath('a.ipynb');
    await model.setPath('b.ipynb');
    expect(model.config).toEqual(CONFIG);
    expect(model.description?.notebook).toBe('policies/b.ipynb');
    expect(api.calls.filter(c => c === 'GET config')).toHaveLength(1);
  });

  it('shows the server words when it refuses a policy', async () => {
    // Given a server that refuses the limit
    const refusal = new Error('memory_limit_mb: 99999 is over the admin cap TFGPU.max_memory_mb');
    const api = fakeApi({
      config: CONFIG,
      policies: (_: string, init?: RequestInit) => {
        if (init?.method === 'PUT') {
          throw refusal;
        }
        return description('a.ipynb');
      }
    });
    const model = new PolicyModel(api);
    await model.setPath('a.ipynb');
    // When the user saves it
    const saved = await model.save({ memory_limit_mb: 99999 });
    // Then the error is the server's message
    expect(saved).toBe(false);
    expect(model.error).toBe(refusal.message);
    expect(api.calls).toContain('PUT policies/a.ipynb');
  });

  it('ignores an answer for a notebook that is no longer current', async () => {
    let release: () => void = () => undefined;
    const slow = new Promise<void>(resolve => (release = resolve));
    const api = fakeApi({
      config: CONFIG,
      'policies/a': async () => {
        await slow;
        return description('a');
      },
      'policies/b': description('b')
    });
    const model = new PolicyModel(api);
    const first = model.setPath('a.ipynb');
    await model.setPath('b.ipynb');
    release();
    await first;
    await settle();
    expect(model.description?.notebook).toBe('b');
  });
});
