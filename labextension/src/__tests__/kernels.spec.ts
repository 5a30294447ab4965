import { FOLLOW_INTERVAL, KernelsModel } from '../kernels';
import { IKernel } from '../types';
import { fakeApi, kernel } from './fixtures';

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
