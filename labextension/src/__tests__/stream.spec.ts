import { appendSnapshot, GpuStreamModel, ISeries, seriesFromHistory } from '../stream';
import { IApi, IHistory } from '../types';
import { fakeApi, gpu, snapshot } from './fixtures';

const STATUS = { backend: 'simulated', available: true, reason: null, simulated: true };
const HISTORY: IHistory = {
  seconds: 60,
  interval: 1,
  simulated: true,
  timestamps: [100, 101, 102],
  gpus: [
    {
      index: 0,
      utilization: [1, null, 3],
      memory_used: [10, 20, 30],
      memory_utilization: [null, null, null],
      temperature: [null, null, null],
      power: [null, null, null]
    }
  ]
};

describe('series', () => {
  it('come from the server history, one per GPU', () => {
    const series = seriesFromHistory(HISTORY);
    expect(series.get(0)).toEqual({
      t: [100, 101, 102],
      utilization: [1, null, 3],
      memory: [10, 20, 30]
    });
  });

  it('append newer snapshots only, and keep the window', () => {
    // Given a series from the history
    const series = seriesFromHistory(HISTORY);
    // When the same sample arrives again (the history rounds to the millisecond), then newer ones
    appendSnapshot(series, snapshot(102.0004, [gpu(0)]), 60);
    appendSnapshot(series, snapshot(103, [gpu(0)]), 60);
    appendSnapshot(series, snapshot(170, [gpu(0, [], { lost: true })]), 60);
    // Then the repeat is ignored, a lost GPU has a gap, and points older than 60 s are gone
    const s = series.get(0) as ISeries;
    expect(s.t).toEqual([170]);
    expect(s.utilization).toEqual([null]);
    appendSnapshot(series, snapshot(null, [gpu(0)]), 60);
    expect(s.t).toEqual([170]);
  });
});

/** The model's options: a 5 s background refresh and 300 s of history unless `extra` says. */
function options(api: IApi, extra: Partial<GpuStreamModel.IOptions> = {}): GpuStreamModel.IOptions {
  return { api, interval: 5, historySeconds: 300, ...extra };
}

describe('GpuStreamModel', () => {
  // Fake timers throughout: the poll, the reconnects and the back-off run on jest's clock, so
  // a loaded machine cannot make a test wait too short or too long.
  let model: GpuStreamModel;
  beforeEach(() => jest.useFakeTimers());
  afterEach(() => {
    model.dispose();
    jest.useRealTimers();
  });

  /** Let `ms` of fake time pass, running the timers and the promises they settle. */
  const advance = (ms = 20) => jest.advanceTimersByTimeAsync(ms);

  it('streams over the websocket while live, with the history first', async () => {
    // Given an available backend
    const api = fakeApi({ status: STATUS, 'gpus/history': HISTORY, gpus: snapshot(1, [gpu(0)]) });
    model = new GpuStreamModel(options(api, { historySeconds: 60 }));
    // When the panel watches live
    model.live = true;
    await advance();
    expect(api.sockets).toHaveLength(1);
    api.sockets[0].send(snapshot(103, [gpu(0)]));
    await advance();
    // Then the history and the streamed snapshot make the series
    expect(model.connected).toBe(true);
    expect(model.snapshot?.timestamp).toBe(103);
    expect(model.series(0)?.t).toEqual([100, 101, 102, 103]);
    expect(api.calls).toContain('GET gpus/history?seconds=60');
    expect(api.calls).not.toContain('GET gpus');
  });

  it('asks for PCIe and NVLink over the socket only when told to', async () => {
    // Given a live stream that delivered
    const api = fakeApi({ status: STATUS, 'gpus/history': HISTORY, gpus: snapshot(1, [gpu(0)]) });
    model = new GpuStreamModel(options(api, { historySeconds: 60 }));
    model.live = true;
    await advance();
    api.sockets[0].send(snapshot(103, [gpu(0)]));
    await advance();
    expect(api.sockets[0].sent).toEqual([]);
    // When the interconnect is turned on, then off
    model.interconnect = true;
    model.interconnect = false;
    // Then the server was asked, then told to stop
    expect(api.sockets[0].sent).toEqual(['{"pcie":true}', '{"pcie":false}']);
    // And a new socket asks again at its first message while it is on
    model.interconnect = true;
    api.sockets[0].drop();
    await advance(6000);
    api.sockets[1].send(snapshot(104, [gpu(0)]));
    await advance();
    expect(api.sockets[1].sent).toEqual(['{"pcie":true}']);
  });

  it('reconnects when the server drops the stream', async () => {
    const api = fakeApi({ status: STATUS, 'gpus/history': HISTORY });
    model = new GpuStreamModel(options(api));
    model.live = true;
    await advance();
    api.sockets[0].send(snapshot(1, [gpu(0)]));
    await advance();
    // When the server drops the connection
    api.sockets[0].drop();
    await advance();
    // Then a new socket is opened at once
    expect(api.sockets).toHaveLength(2);
  });

  it('backs off when the stream keeps failing before it delivers', async () => {
    const api = fakeApi({ status: STATUS });
    model = new GpuStreamModel(options(api, { interval: 1 }));
    model.live = true;
    await advance(20);
    // When the socket closes before any message
    api.sockets[0].drop();
    await advance(990);
    // Then the model reports it and does not hammer the server
    expect(model.connected).toBe(false);
    expect(model.error).toMatch(/closed/);
    expect(api.sockets).toHaveLength(1);
    // And tries again after the interval, then after three times as long
    await advance(20);
    expect(api.sockets).toHaveLength(2);
    api.sockets[1].drop();
    await advance(2990);
    expect(api.sockets).toHaveLength(2);
    await advance(20);
    expect(api.sockets).toHaveLength(3);
  });

  it('polls GET gpus instead while nobody watches live, and closes the socket', async () => {
    const api = fakeApi({ status: STATUS, 'gpus/history': HISTORY, gpus: snapshot(5, [gpu(0)]) });
    model = new GpuStreamModel(options(api));
    model.live = true;
    await advance();
    api.sockets[0].send(snapshot(4, [gpu(0)]));
    await advance();
    // When the panel is hidden
    model.live = false;
    await advance();
    // Then the socket is closed and the snapshot comes over REST
    expect(api.sockets[0].closed).toBe(true);
    expect(model.connected).toBe(false);
    expect(model.snapshot?.timestamp).toBe(5);
  });

  it('stays off the GPUs when the backend is unavailable', async () => {
    const reason = "GPU monitoring is turned off (TFGPU.backend = 'none')";
    const api = fakeApi({ status: { ...STATUS, available: false, reason } });
    model = new GpuStreamModel(options(api));
    model.live = true;
    await advance();
    expect(model.status?.reason).toBe(reason);
    expect(api.sockets).toHaveLength(0);
    expect(api.calls).toEqual(['GET status']);
  });

  it('reports a failing server, and asks for the status again', async () => {
    const api = fakeApi({ status: new Error('Network down') });
    model = new GpuStreamModel(options(api));
    await advance();
    expect(model.error).toBe('Network down');
    expect(model.status).toBeNull();
  });
});
