import { GiB } from '../format';
import { FOLLOW_INTERVAL, followStream, KernelsModel } from '../kernels';
import { statusLine } from '../statustext';
import { GpuStreamModel } from '../stream';
import { IKernel, IStreamKernel } from '../types';
import { fakeApi, gpu, kernel, kernelHolding, perGpu, snapshot } from './fixtures';

describe('KernelsModel following policy changes', () => {
  // Fake timers: the throttle and the background poll run on jest's clock.
  let model: KernelsModel;
  beforeEach(() => jest.useFakeTimers());
  afterEach(() => {
    model.dispose();
    jest.useRealTimers();
  });

  const advance = (ms: number) => jest.advanceTimersByTimeAsync(ms);

  /** When each GET kernels was sent, in fake milliseconds. */
  function timedApi() {
    const sent: number[] = [];
    const api = fakeApi({
      kernels: () => {
        sent.push(Date.now());
        return { kernels: [kernel('k1', { restart_required: sent.length > 1 })] };
      }
    });
    return { api, sent };
  }

  it('re-reads at most once per interval while changes keep coming, and after the last', async () => {
    // Given the kernels model, after its first read
    const { api, sent } = timedApi();
    model = new KernelsModel(api);
    await advance(10);
    const before = sent.length;

    // When a change is pushed every 100 ms for 5 s
    const start = Date.now();
    for (let n = 0; n < 50; n++) {
      model.refreshSoon();
      await advance(100);
    }
    const lastChange = Date.now() - 100;
    // And then nothing for a while
    await advance(3 * FOLLOW_INTERVAL);

    // Then the kernels were read about once a second, not 50 times
    const reads = sent.slice(before);
    expect(reads.length).toBeGreaterThanOrEqual(4);
    expect(reads.length).toBeLessThanOrEqual(6);
    for (let n = 1; n < reads.length; n++) {
      expect(reads[n] - reads[n - 1]).toBeGreaterThanOrEqual(FOLLOW_INTERVAL);
    }
    // And the last read came after the last change, within the interval
    const last = reads[reads.length - 1];
    expect(last).toBeGreaterThan(lastChange);
    expect(last - lastChange).toBeLessThanOrEqual(FOLLOW_INTERVAL);
    expect(reads[0] - start).toBeLessThanOrEqual(FOLLOW_INTERVAL);
  });

  it('reads once more when a change comes while a read is on its way', async () => {
    // Given a server whose answer to GET kernels the test releases
    const answers: ((value: { kernels: IKernel[] }) => void)[] = [];
    const api = fakeApi({
      kernels: () => new Promise(resolve => answers.push(resolve))
    });
    model = new KernelsModel(api);
    await advance(10);
    answers.splice(0).forEach(answer => answer({ kernels: [] }));
    await advance(10);
    const before = api.calls.length;

    // When a change comes, and its re-read is sent
    model.refreshSoon();
    await advance(FOLLOW_INTERVAL);
    expect(api.calls.length).toBe(before + 1);
    // And another change comes before the answer, which then says the kernel needs a restart
    model.refreshSoon();
    answers.splice(0).forEach(answer => answer({ kernels: [kernel('k1')] }));
    await advance(FOLLOW_INTERVAL + 10);

    // Then the kernels are read once more, for the change that came during the first read
    expect(api.calls.length).toBe(before + 2);
    answers
      .splice(0)
      .forEach(answer => answer({ kernels: [kernel('k1', { restart_required: true })] }));
    await advance(10);
    expect(model.find('k1')?.restart_required).toBe(true);
    // And nothing more is read while no change comes
    await advance(5 * FOLLOW_INTERVAL);
    expect(api.calls.length).toBe(before + 2);
  });
});

describe("KernelsModel following the stream's kernel summary", () => {
  // Fake timers: the background poll (30 s) and the follow-up re-read run on jest's clock.
  let model: KernelsModel;
  let stream: GpuStreamModel;
  beforeEach(() => jest.useFakeTimers());
  afterEach(() => {
    stream.dispose();
    model.dispose();
    jest.useRealTimers();
  });

  const advance = (ms: number) => jest.advanceTimersByTimeAsync(ms);
  const STALE = "GPU 0's process list could not be read (NVMLError_Timeout: Timeout)";
  const STATUS = { backend: 'simulated', available: true, reason: null, simulated: true };
  const HISTORY = { seconds: 300, interval: 1, simulated: true, timestamps: [], gpus: [] };

  /** The stream's short view of kernel k1 with its memory known from NVML, or as given. */
  const summary = (extra: Partial<IStreamKernel> = {}): IStreamKernel => ({
    id: 'k1',
    notebook: 'k1.ipynb',
    execution_state: 'idle',
    gpu_memory: GiB,
    gpu_memory_source: 'nvml',
    gpu_memory_unknown: null,
    memory_limit_mb: null,
    restart_required: false,
    enforcement: 'none',
    ...extra
  });

  /** GET kernels showing k1 holding 1 GiB on GPU 0, known from NVML; the stream following it. */
  async function following() {
    const api = fakeApi({
      kernels: { kernels: [kernelHolding('k1', [perGpu(0, GiB, 'nvml')])] },
      status: STATUS,
      'gpus/history': HISTORY,
      gpus: snapshot(5, [gpu(0)])
    });
    model = new KernelsModel(api);
    stream = new GpuStreamModel({ api, interval: 5, historySeconds: 300 });
    followStream(model, stream);
    stream.live = true;
    await advance(10);
    return api;
  }

  it('says at once that a kernel memory is unknown, without waiting for GET kernels', async () => {
    // Given the kernels read and the panel streaming live
    const api = await following();
    const socket = api.sockets[0];
    const held = gpu(0, [[10, GiB, 'k1', 'k1.ipynb']]);
    socket.send({ ...snapshot(1, [held]), kernels: [summary()] });
    await advance(10);
    expect(model.find('k1')?.gpu_memory.unknown ?? null).toBeNull();
    const reads = api.calls.filter(c => c === 'GET kernels').length;
    let changes = 0;
    model.changed.connect(() => changes++);

    // When the next message says its memory is unknown now (a stale process list)
    socket.send({ ...snapshot(2, [held]), kernels: [summary({ gpu_memory_unknown: STALE })] });
    await advance(10);

    // Then the kernel is unknown with the reason at once, and the status bar says so
    expect(model.find('k1')?.gpu_memory.unknown).toBe(STALE);
    expect(changes).toBe(1);
    const line = statusLine({
      status: stream.status,
      snapshot: stream.snapshot,
      error: null,
      kernelId: 'k1',
      kernel: model.find('k1'),
      choice: { mode: 'kernel', indices: [] }
    });
    expect(line.text).toBe('GPU: 1.0 GiB (stale)');
    expect(line.tooltip).toContain(`GPU memory is unknown now: ${STALE}.`);
    expect(model.find('k1')?.gpu_memory.per_gpu).toEqual([perGpu(0, GiB, 'nvml')]);
    // And GET kernels was not needed for it
    expect(api.calls.filter(c => c === 'GET kernels').length).toBe(reads);

    // When a later message says it is known again
    socket.send({ ...snapshot(3, [held]), kernels: [summary()] });
    await advance(10);
    // Then the warning goes at once
    expect(model.find('k1')?.gpu_memory.unknown ?? null).toBeNull();
  });

  it('re-reads GET kernels soon when the stream says where the figure comes from changed', async () => {
    // Given the kernels read and the panel streaming live
    const api = await following();
    const reads = () => api.calls.filter(c => c === 'GET kernels').length;
    const before = reads();

    // When the stream says k1's figure is now its own report (only GET kernels has per GPU)
    api.sockets[0].send({
      ...snapshot(1, [gpu(0)]),
      kernels: [summary({ gpu_memory_source: 'kernel_report' })]
    });
    await advance(10);
    expect(model.find('k1')?.gpu_memory.source).toBe('kernel_report');

    // Then the kernels are read again within the follow interval, not after 30 s
    await advance(FOLLOW_INTERVAL);
    expect(reads()).toBe(before + 1);

    // When GET kernels still says NVML (it reads a later sample) while the stream goes on
    for (let n = 2; n < 7; n++) {
      api.sockets[0].send({
        ...snapshot(n, [gpu(0)]),
        kernels: [summary({ gpu_memory_source: 'kernel_report' })]
      });
      await advance(1000);
    }
    // Then that difference cost that one read, not one a second
    expect(reads()).toBe(before + 1);
  });

  it('reads GET kernels soon for a kernel the stream lists first', async () => {
    // Given the kernels read and the panel streaming live
    const api = await following();
    const before = api.calls.filter(c => c === 'GET kernels').length;
    // When a message lists a kernel started elsewhere (another tab, the REST API)
    api.sockets[0].send({ ...snapshot(1, [gpu(0)]), kernels: [summary(), summary({ id: 'k2' })] });
    await advance(FOLLOW_INTERVAL + 10);
    // Then it is read (its policy and what it started with are GET's alone)
    expect(api.calls.filter(c => c === 'GET kernels').length).toBe(before + 1);
  });

  it('goes back to GET kernels when the stream stops', async () => {
    // Given a live message that says k1's memory is unknown
    const api = await following();
    api.sockets[0].send({
      ...snapshot(1, [gpu(0)]),
      kernels: [summary({ gpu_memory_unknown: STALE })]
    });
    await advance(10);
    expect(model.find('k1')?.gpu_memory.unknown).toBe(STALE);

    // When the panel closes and the snapshots come from GET gpus (which has no kernels)
    stream.live = false;
    await advance(10);

    // Then the kernel is as GET kernels last said
    expect(stream.kernels).toBeNull();
    expect(model.find('k1')?.gpu_memory.unknown ?? null).toBeNull();
  });
});
