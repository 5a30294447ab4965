import * as React from 'react';

import { describeLimitHolding, RUNNING_ENFORCEMENT_ID } from '../kernelmemory';
import { policyFields } from '../policy';
import schema from '../policy.schema.json';
import { PolicyForm } from '../policyform';
import { GpuStreamModel } from '../stream';
import { IConfig, IHardCapsStatus, IStatus } from '../types';
import { CONTEXT_RESERVE, fakeApi, gpu, HARD_CAPS_OFF, SAMPLER, snapshot } from './fixtures';

// react-dom ships no types here; its server renderer turns an element into the HTML it makes.
const { renderToStaticMarkup } = jest.requireActual('react-dom/server') as {
  renderToStaticMarkup: (element: React.ReactElement) => string;
};

/** The text a page shows for some HTML (tags dropped, entities read). */
function text(markup: string): string {
  return markup
    .replace(/<[^>]+>/g, '')
    .replace(/&#x27;/g, "'")
    .replace(/&quot;/g, '"')
    .replace(/&amp;/g, '&');
}

const ENFORCER: IConfig['enforcement'] = {
  action: 'interrupt',
  grace: 30,
  idle_timeout: 0,
  idle_min_memory_mb: 256,
  idle_action: 'restart',
  max_actions_per_hour: 3
};

const CONFIG: IConfig = {
  default_policy: {},
  max_memory_mb: null,
  allowed_devices: null,
  force_memory_growth: false,
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
  hard_caps: 'mps',
  enforcement: ENFORCER,
  caps_file: null,
  problems: []
};

/** GET status with `hard_caps` as given. */
function status(hardCaps: IHardCapsStatus): IStatus {
  return {
    backend: 'simulated',
    available: true,
    reason: null,
    simulated: true,
    device_count: 1,
    sample_interval: 1,
    versions: {},
    sampler: SAMPLER,
    context_reserve: CONTEXT_RESERVE,
    hard_caps: hardCaps
  };
}

const MPS_RUNNING: IHardCapsStatus = {
  ...HARD_CAPS_OFF,
  asked: 'mps',
  in_force: 'mps',
  mechanism: { name: 'mps', state: 'running', detail: null, facts: { pid: 4242 } }
};

/** The policy form of a notebook without a policy of its own. */
function form(hardCaps: IHardCapsStatus | undefined, enforcementId?: string): string {
  return renderToStaticMarkup(
    React.createElement(PolicyForm, {
      fields: policyFields(schema),
      description: { notebook: 'a.ipynb', policy: null, effective: { sources: {} }, revision: 0 },
      config: CONFIG,
      gpus: [gpu(0)],
      enforcementId,
      hardCaps,
      error: null,
      onSave: async () => undefined,
      onReset: async () => undefined
    })
  );
}

describe('the policy form without a running kernel, from the GET status the panel reads', () => {
  // Fake timers: the stream model reads GET status on jest's clock, as the panel's model does.
  let model: GpuStreamModel;
  beforeEach(() => jest.useFakeTimers());
  afterEach(() => {
    model.dispose();
    jest.useRealTimers();
  });

  /** The stream model's status once it has read GET status (no poll of its own). */
  async function readStatus(hardCaps: IHardCapsStatus): Promise<IStatus> {
    const api = fakeApi({
      status: status(hardCaps),
      'gpus/history': { seconds: 60, interval: 1, simulated: true, timestamps: [], gpus: [] },
      gpus: snapshot(1, [gpu(0)])
    });
    model = new GpuStreamModel({ api, interval: 5, historySeconds: 60 });
    model.live = true;
    await jest.advanceTimersByTimeAsync(20);
    expect(api.calls.filter(c => c === 'GET status')).toHaveLength(1);
    return model.status as IStatus;
  }

  it('says a memory limit is cooperative when hard caps are off, next to the limit', async () => {
    // Given a server with TFGPU.hard_caps off
    const read = await readStatus(HARD_CAPS_OFF);
    // When the form shows with no kernel running
    const markup = form(read.hard_caps);
    // Then the memory limit says how a limit set there is held, and is described by it
    expect(text(markup)).toContain(
      "On this server a memory limit is cooperative: the kernel's framework settings hold it " +
        '(past it, after 30 s, the enforcer interrupts the kernel).'
    );
    expect(markup).toMatch(
      /id="jp-tfgpu-field-memory_limit_mb" aria-describedby="[^"]*jp-tfgpu-field-memory_limit_mb-held/
    );
    expect(text(markup)).not.toMatch(/hard cap/i);
  });

  it('says the driver holds it too under MPS, but not that it is a hard cap', async () => {
    const read = await readStatus(MPS_RUNNING);
    const said = text(form(read.hard_caps));
    expect(said).toContain(
      "On this server a memory limit is cooperative: the kernel's framework settings hold it, " +
        'and the driver too (an MPS memory limit)'
    );
    expect(said).toContain(
      'It is not said to be a hard cap until a GPU run has shown that limit holding on this ' +
        'driver and the kernel cannot lift it.'
    );
  });

  it('says nothing of its own while a kernel runs: the running tag describes the limit', async () => {
    const read = await readStatus(MPS_RUNNING);
    const markup = form(read.hard_caps, RUNNING_ENFORCEMENT_ID);
    expect(markup).not.toContain('jp-tfgpu-Held');
    expect(markup).toContain(`aria-describedby="${RUNNING_ENFORCEMENT_ID}"`);
  });
});

describe('describeLimitHolding', () => {
  it('says nothing before GET status is read', () => {
    expect(describeLimitHolding(undefined, ENFORCER)).toBeNull();
  });

  it('says what the enforcer does past the limit, when it is off, and nothing unknown', () => {
    expect(describeLimitHolding(HARD_CAPS_OFF, { ...ENFORCER, action: 'warn', grace: 0 })).toBe(
      "On this server a memory limit is cooperative: the kernel's framework settings hold it " +
        '(past it, the enforcer warns).'
    );
    expect(describeLimitHolding(HARD_CAPS_OFF, { ...ENFORCER, action: 'off' })).toBe(
      "On this server a memory limit is cooperative: the kernel's framework settings hold it " +
        '(the enforcer is off).'
    );
    expect(describeLimitHolding(HARD_CAPS_OFF)).toBe(
      "On this server a memory limit is cooperative: the kernel's framework settings hold it."
    );
  });

  it("gives the server's reason when the mode asked for is not in force", () => {
    const reason = 'nvidia-cuda-mps-control is not on the PATH';
    const tried = `mps: ${reason}`;
    const said = describeLimitHolding({ ...HARD_CAPS_OFF, asked: 'auto', reason: tried });
    expect(said).toBe(
      "On this server a memory limit is cooperative: the kernel's framework settings hold it. " +
        `Hard caps asked for: auto (mps: ${reason}).`
    );
  });

  it('says an NVML limit can be lifted by a kernel running as root', () => {
    const said = describeLimitHolding({
      ...HARD_CAPS_OFF,
      asked: 'nvml',
      in_force: 'nvml',
      mechanism: { name: 'nvml', state: 'running', detail: null, facts: {} },
      host: { euid: 0 } as IHardCapsStatus['host']
    });
    expect(said).toContain("and the driver too (an NVML memory limit on the kernel's cgroup)");
    expect(said).toContain('Here kernels run as root, so they can lift it.');
  });

  it('says a kernel may get the framework settings alone while the mechanism is down', () => {
    const said = describeLimitHolding({
      ...MPS_RUNNING,
      mechanism: { name: 'mps', state: 'failed', detail: 'daemon exited (1)', facts: {} }
    });
    expect(said).toBe(
      "On this server a memory limit is cooperative: the kernel's framework settings hold it; " +
        'the MPS mechanism that would set an MPS memory limit is failed (daemon exited (1)), so ' +
        'a kernel started now may have the framework settings alone.'
    );
  });

  it('never says hard cap as such, whatever GET status reports', () => {
    for (const state of ['running', 'starting', 'restarting', 'failed', 'stopped'] as const) {
      for (const mode of ['off', 'mps', 'nvml'] as const) {
        const said = describeLimitHolding({
          ...HARD_CAPS_OFF,
          in_force: mode,
          mechanism: { name: mode, state, detail: null, facts: {} }
        }) as string;
        expect(said.replace('not said to be a hard cap', '')).not.toMatch(/hard/i);
      }
    }
  });
});
