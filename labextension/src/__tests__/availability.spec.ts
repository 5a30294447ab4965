import { describeAvailability } from '../availability';
import { IStatus } from '../types';
import { CONTEXT_RESERVE, HARD_CAPS_OFF, SAMPLER } from './fixtures';

const status = (extra: Partial<IStatus>): IStatus => ({
  backend: 'none',
  configured_backend: 'auto',
  available: false,
  reason: 'NVML Shared Library Not Found',
  retry_in: null,
  simulated: false,
  device_count: 0,
  sample_interval: 1,
  sampler: SAMPLER,
  versions: {},
  context_reserve: CONTEXT_RESERVE,
  hard_caps: HARD_CAPS_OFF,
  ...extra
});

describe('describeAvailability', () => {
  it('warns when the admin named NVML and it failed: the reason and the next try', () => {
    // Given a server set to NVML whose library is missing, trying again in 4.6 s
    const said = describeAvailability(status({ configured_backend: 'nvml', retry_in: 4.6 }));
    // Then it is a warning that names NVML, the reason and when it tries again
    expect(said.level).toBe('warning');
    expect(said.title).toBe('GPU monitoring failed');
    expect(said.message).toBe(
      'This server is set to read its GPUs with NVML, which did not start: ' +
        'NVML Shared Library Not Found. It tries again in 5 s.'
    );
    expect(said.hint).toContain('run on the CPU only');
  });

  it('says a retry that is due is under way, and leaves out an unknown one', () => {
    const due = describeAvailability(status({ configured_backend: 'nvml', retry_in: 0.2 }));
    expect(due.message).toMatch(/ It is trying again now\.$/);
    const unknown = describeAvailability(status({ configured_backend: 'nvml', retry_in: null }));
    expect(unknown.message).toMatch(/Not Found\.$/);
  });

  it('is calm on a server that simply has no GPU, or whose monitoring is off', () => {
    // Given "auto" that found nothing, an old server that does not say, and "none"
    const auto = describeAvailability(status({}));
    const old = describeAvailability(status({ configured_backend: undefined }));
    const off = describeAvailability(
      status({
        configured_backend: 'none',
        reason: "GPU monitoring is turned off (TFGPU.backend = 'none')"
      })
    );
    // Then each is information, with the server's reason
    expect([auto.level, old.level, off.level]).toEqual(['info', 'info', 'info']);
    expect(auto.title).toBe('No GPU on this server');
    expect(auto.message).toBe('NVML Shared Library Not Found');
    expect(old).toEqual(auto);
    expect(off.title).toBe('GPU monitoring is off');
    expect(off.hint).toContain('turned GPU monitoring off');
  });
});
