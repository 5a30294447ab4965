import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { closeIcon, ReactWidget, refreshIcon, stopIcon } from '@jupyterlab/ui-components';
import type { LabIcon } from '@jupyterlab/ui-components';
import * as React from 'react';

import { describeAvailability } from './availability';
import { describeCadence } from './cadence';
import { basename, formatBytes } from './format';
import { GpuCard } from './gpucard';
import { groupHolders, IHolder, RowOrder } from './holders';
import { gpuIcon } from './icon';
import {
  HolderFigure,
  HolderGpus,
  MpsServerHolder,
  OwnReportNote,
  rowEnforcementId,
  RowEnforcement,
  RunningCap,
  RUNNING_ENFORCEMENT_ID,
  UnknownKernels,
  UnknownNote
} from './kernelmemory';
import { KernelsModel } from './kernels';
import { IPolicyField, PolicyModel } from './policy';
import { PolicyForm } from './policyform';
import { GpuStreamModel } from './stream';
import { IGpu, IKernel, IStatus, Policy } from './types';

/** What the panel's kernel buttons do (jupyter_server's own kernel API). */
export type KernelAction = 'interrupt' | 'restart' | 'shutdown';

/**
 * The GPU sidebar: a card per GPU with sparklines, who holds the memory, and the current
 * notebook's policy. It streams snapshots only while it is visible.
 */
export class GpuPanel extends ReactWidget {
  /** Show the models' data; `options` carries the actions that need the application. */
  constructor(private _options: GpuPanel.IOptions) {
    super();
    this.id = 'jp-tfgpu-panel';
    this.title.icon = gpuIcon;
    this.title.caption = 'GPUs';
    this.addClass('jp-tfgpu-Panel');
    this.node.setAttribute('role', 'region');
    this.node.setAttribute('aria-label', 'GPU panel');
    const update = () => this.update();
    _options.stream.changed.connect(update);
    _options.kernels.changed.connect(update);
    _options.policy.changed.connect(update);
    _options.tracker.currentChanged.connect(this._onCurrent, this);
    this._onCurrent();
  }

  protected onAfterShow(): void {
    this._watch(true);
  }

  protected onAfterHide(): void {
    this._watch(false);
  }

  protected onAfterAttach(): void {
    this._watch(this.isVisible);
  }

  private _watch(visible: boolean): void {
    this._options.stream.live = visible;
    this._options.kernels.active = visible;
    this.update();
  }

  /** The policy follows the current notebook (and its renames). */
  private _onCurrent(): void {
    this._notebook?.context.pathChanged.disconnect(this._onPath, this);
    this._notebook = this._options.tracker.currentWidget;
    this._notebook?.context.pathChanged.connect(this._onPath, this);
    this._onPath();
  }

  private _onPath(): void {
    const path = this._notebook ? this._options.localPath(this._notebook.context.path) : null;
    void this._options.policy.setPath(path);
    this.update();
  }

  protected render(): JSX.Element {
    const { stream } = this._options;
    const status = stream.status;
    let body: React.ReactNode;
    if (stream.error && !status) {
      body = (
        <div className="jp-tfgpu-Error" role="alert">
          Cannot reach the GPU service: {stream.error}. Retrying&hellip;
        </div>
      );
    } else if (!status) {
      body = <p className="jp-tfgpu-Muted">Connecting to the GPU service&hellip;</p>;
    } else if (!status.available) {
      body = <Unavailable status={status} />;
    } else {
      body = (
        <>
          {this._gpus()}
          {this._holders()}
          {this._policy()}
        </>
      );
    }
    return (
      <div className="jp-tfgpu-Panel-body">
        <header className="jp-tfgpu-Header">
          <h2>GPUs</h2>
          {status?.available && (
            <button
              type="button"
              className="jp-tfgpu-Toggle"
              aria-pressed={stream.interconnect}
              title="Read PCIe and NVLink throughput while this panel is open (costs driver time)"
              onClick={() => {
                stream.interconnect = !stream.interconnect;
                this.update();
              }}
            >
              PCIe/NVLink
            </button>
          )}
          {status?.available && <Connection stream={stream} />}
        </header>
        {body}
      </div>
    );
  }

  private _gpus(): React.ReactNode {
    const { stream, historySeconds } = this._options;
    const snapshot = stream.snapshot;
    if (!snapshot) {
      return <p className="jp-tfgpu-Muted">Waiting for the first sample&hellip;</p>;
    }
    const stretched = describeCadence(snapshot);
    return [
      stretched && (
        <p key="cadence" className="jp-tfgpu-Note jp-tfgpu-Cadence" role="status">
          {stretched}
        </p>
      ),
      ...snapshot.gpus.map(gpu => (
        <GpuCard
          key={gpu.index}
          gpu={gpu}
          simulated={snapshot.simulated}
          series={stream.series(gpu.index)}
          seconds={historySeconds()}
        />
      ))
    ];
  }

  private _holders(): React.ReactNode {
    const { stream, kernels, openNotebook, kernelAction } = this._options;
    const { kernels: held, others: all, unknown } = groupHolders(stream.snapshot, kernels.kernels);
    // While the focus is in the list its rows stay put (a focused row moved may lose the focus).
    const focused = !!this._list.current?.contains(document.activeElement);
    const rows = this._rows.next(held, focused);
    const mpsServers = all.filter(h => h.mpsServer);
    const others = all.filter(h => !h.mpsServer);
    return (
      <section className="jp-tfgpu-Section" aria-labelledby="jp-tfgpu-holders">
        <h3 id="jp-tfgpu-holders">GPU memory by notebook</h3>
        {!held.length && !all.length && !unknown.length && (
          <p className="jp-tfgpu-Muted">No process holds GPU memory.</p>
        )}
        <ul
          className="jp-tfgpu-Holders"
          ref={this._list}
          onBlur={e => e.currentTarget.contains(e.relatedTarget) || this.update()}
        >
          {rows.map(holder => (
            <Holder
              key={holder.kernelId}
              holder={holder}
              state={this._kernelState(holder.kernelId as string)}
              kernel={kernels.find(holder.kernelId)}
              gpus={stream.snapshot?.gpus ?? []}
              onOpen={openNotebook}
              onAction={kernelAction}
            />
          ))}
          <UnknownKernels kernels={unknown} />
          {mpsServers.map(h => (
            <MpsServerHolder key={`mps-${h.pids[0]}`} holder={h} />
          ))}
          {others.length > 0 && (
            <li className="jp-tfgpu-Holder">
              <div className="jp-tfgpu-Holder-head">
                <span className="jp-tfgpu-Holder-name">Other processes</span>
                <span>{formatBytes(others.reduce((sum, h) => sum + h.total, 0))}</span>
              </div>
              <div className="jp-tfgpu-Muted">
                Not started by a kernel of this server:{' '}
                {others
                  .map(h => `PID ${h.pids[0]} on GPU ${h.gpus[0].index} (${formatBytes(h.total)})`)
                  .join(', ')}
              </div>
            </li>
          )}
        </ul>
        {held.some(h => h.gpus.some(g => g.ownReport)) && <OwnReportNote />}
      </section>
    );
  }

  /** An open notebook's kernel status is live; other kernels' comes from the last refresh. */
  private _kernelState(id: string): string | null {
    const { tracker, kernels } = this._options;
    const open = tracker.find(w => w.sessionContext.session?.kernel?.id === id);
    return (
      open?.sessionContext.session?.kernel?.status ?? kernels.find(id)?.execution_state ?? null
    );
  }

  private _policy(): React.ReactNode {
    const { policy, stream, kernels, fields } = this._options;
    const path = policy.path;
    const kernelId = this._notebook?.sessionContext.session?.kernel?.id;
    const kernel = kernels.find(kernelId);
    const description = policy.description;
    return (
      <section className="jp-tfgpu-Section" aria-labelledby="jp-tfgpu-policy">
        <h3 id="jp-tfgpu-policy" title={path ?? undefined}>
          {path ? `GPU policy of ${basename(path)}` : 'GPU policy'}
        </h3>
        {!path && (
          <p className="jp-tfgpu-Muted">
            Open a notebook to choose how its kernel may use the GPUs.
          </p>
        )}
        {kernel?.restart_required && (
          <div className="jp-tfgpu-Banner" role="status">
            <span>
              The running kernel started with another policy. Restart it to apply this one.
            </span>
            <button
              className="jp-mod-styled jp-mod-warn"
              onClick={() => this._options.kernelAction('restart', kernel.id, kernel.notebook)}
            >
              Restart kernel
            </button>
          </div>
        )}
        {kernel && !kernel.restart_required && (
          <p className="jp-tfgpu-Ok" role="status">
            The running kernel uses this policy.
          </p>
        )}
        {kernel && <RunningCap kernel={kernel} gpus={stream.snapshot?.gpus ?? []} />}
        {path && description && (
          <PolicyForm
            key={path}
            fields={fields}
            description={description}
            config={policy.config}
            gpus={stream.snapshot?.gpus ?? []}
            enforcementId={kernel?.enforcement ? RUNNING_ENFORCEMENT_ID : undefined}
            hardCaps={stream.status?.hard_caps}
            error={policy.error}
            onSave={async (draft: Policy) => {
              if (await policy.save(draft)) {
                await kernels.refresh();
              }
            }}
            onReset={async () => {
              await policy.reset();
              await kernels.refresh();
            }}
          />
        )}
        {path && !description && policy.error && (
          <div className="jp-tfgpu-Error" role="alert">
            {policy.error}
          </div>
        )}
        {path && (
          <p className="jp-tfgpu-Muted">A policy applies when the notebook&apos;s kernel starts.</p>
        )}
      </section>
    );
  }

  private _notebook: NotebookPanel | null = null;
  private _list = React.createRef<HTMLUListElement>();
  private _rows = new RowOrder<IHolder>(h => h.kernelId as string);
}

/** Options of `GpuPanel`. */
export namespace GpuPanel {
  /** The models, the policy form's fields, and the actions that need the application. */
  export interface IOptions {
    stream: GpuStreamModel;
    kernels: KernelsModel;
    policy: PolicyModel;
    tracker: INotebookTracker;
    fields: IPolicyField[];
    historySeconds: () => number;
    localPath: (path: string) => string;
    openNotebook: (path: string) => void;
    kernelAction: (action: KernelAction, kernelId: string, notebook: string | null) => void;
  }
}

/** Live, reconnecting or stale. */
function Connection(props: { stream: GpuStreamModel }): JSX.Element {
  const { stream } = props;
  const [text, title] = stream.error
    ? ['offline', `Cannot reach the GPU service: ${stream.error}. Retrying.`]
    : stream.connected
      ? ['live', 'Every sample is streamed from the server']
      : ['connecting', 'Opening the live stream of samples'];
  return (
    <span className={`jp-tfgpu-Connection jp-mod-${text}`} title={title}>
      {text}
    </span>
  );
}

/** The explanation shown when the server cannot read any GPU: calm, or a warning. */
function Unavailable(props: { status: IStatus }): JSX.Element {
  const said = describeAvailability(props.status);
  const warning = said.level === 'warning';
  return (
    <div
      className={`jp-tfgpu-Unavailable${warning ? ' jp-mod-warning' : ''}`}
      role={warning ? 'alert' : 'status'}
    >
      <h3>{said.title}</h3>
      <p>{said.message}</p>
      <p className="jp-tfgpu-Muted">{said.hint}</p>
    </div>
  );
}

/** One kernel's memory, its notebook (a link), how its cap is enforced, and its kernel buttons. */
function Holder(props: {
  holder: IHolder;
  state: string | null;
  kernel: IKernel | undefined;
  gpus: IGpu[];
  onOpen: (path: string) => void;
  onAction: (action: KernelAction, kernelId: string, notebook: string | null) => void;
}): JSX.Element {
  const { holder, state, kernel, gpus, onOpen, onAction } = props;
  const id = holder.kernelId as string;
  const tagId = kernel?.enforcement ? rowEnforcementId(id) : undefined;
  const button = (action: KernelAction, icon: LabIcon, label: string) => (
    <button
      className="jp-tfgpu-IconButton"
      title={label}
      aria-label={`${label} (${basename(holder.notebook) || id})`}
      onClick={() => onAction(action, id, holder.notebook)}
    >
      <icon.react tag="span" elementSize="small" />
    </button>
  );
  return (
    <li className="jp-tfgpu-Holder">
      <div className="jp-tfgpu-Holder-head">
        {holder.notebook ? (
          <button
            className="jp-tfgpu-Link jp-tfgpu-Holder-name"
            title={`Open ${holder.notebook}`}
            aria-label={`Open ${holder.notebook}`}
            aria-describedby={tagId}
            onClick={() => onOpen(holder.notebook as string)}
          >
            {basename(holder.notebook)}
          </button>
        ) : (
          <span className="jp-tfgpu-Holder-name">Kernel {id.slice(0, 8)} (no notebook)</span>
        )}
        <HolderFigure holder={holder} />
      </div>
      {holder.unknown && <UnknownNote reason={holder.unknown} />}
      <div className="jp-tfgpu-Holder-foot">
        <span className="jp-tfgpu-Muted">
          <HolderGpus holder={holder} />
          {state && ` \u00b7 ${state}`}
          <RowEnforcement kernel={kernel} gpus={gpus} />
        </span>
        <span className="jp-tfgpu-Holder-actions">
          {button('interrupt', stopIcon, 'Interrupt the kernel')}
          {button('restart', refreshIcon, 'Restart the kernel')}
          {button('shutdown', closeIcon, 'Shut down the kernel')}
        </span>
      </div>
    </li>
  );
}
