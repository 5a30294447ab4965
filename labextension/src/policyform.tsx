import * as React from 'react';

import { describeLimitHolding } from './kernelmemory';
import {
  DEVICE_MODES,
  describeValue,
  fieldAccepts,
  fieldLimit,
  IFieldLimit,
  IPolicyField,
  policyBody,
  PRIMARY_FIELDS
} from './policy';
import { IConfig, IGpu, IHardCapsStatus, IPolicyDescription, Policy, Source } from './types';

/** Hints for values the admin set: where the value in force came from. */
const SOURCES: Record<string, string> = {
  default: 'Admin default',
  cap: 'Admin cap'
};

/** Props of `PolicyForm`. */
export interface IPolicyFormProps {
  fields: IPolicyField[];
  description: IPolicyDescription;
  config: IConfig | null;
  gpus: IGpu[];
  /** The running kernel's enforcement tag: the memory limit's control names it. */
  enforcementId?: string;
  /** GET status's `hard_caps`: without a running kernel, the limit says how it would be held. */
  hardCaps?: IHardCapsStatus;
  error: string | null;
  onSave: (draft: Policy) => Promise<void>;
  onReset: () => Promise<void>;
}

/** The current notebook's policy: one input per schema field, Save, and back to defaults. */
export function PolicyForm(props: IPolicyFormProps): JSX.Element {
  const { fields, description, config, error } = props;
  const own = description.policy ?? {};
  const ownText = JSON.stringify(policyBody(own));
  const [draft, setDraft] = React.useState<Policy>(own);
  // The saved policy the draft started from: the server's may move on under it.
  const [base, setBase] = React.useState(ownText);
  const [busy, setBusy] = React.useState(false);
  const locked = config !== null && !config.allow_user_policies;
  const draftText = JSON.stringify(policyBody(draft));
  const dirty = draftText !== base;
  // Saved elsewhere (another tab, %tfgpu, a widget, the REST API) while this form has edits.
  const conflict = ownText !== base && dirty && ownText !== draftText;
  const adopt = () => {
    setDraft(own);
    setBase(ownText);
  };
  React.useEffect(() => {
    if (ownText !== base && (!dirty || ownText === draftText)) {
      adopt(); // nothing of the user's to lose: show the saved policy
    }
  }, [ownText]);
  const held = props.enforcementId
    ? null
    : describeLimitHolding(props.hardCaps, config?.enforcement);
  const more = fields.filter(f => !PRIMARY_FIELDS.includes(f.name));
  const field = (f: IPolicyField) => (
    <Field
      key={f.name}
      field={f}
      limit={fieldLimit(f, config)}
      value={draft[f.name] ?? null}
      effective={description.effective[f.name] ?? null}
      source={description.effective.sources?.[f.name] ?? null}
      gpus={props.gpus}
      alsoDescribedBy={f.name === 'memory_limit_mb' ? props.enforcementId : undefined}
      held={f.name === 'memory_limit_mb' ? held : null}
      onChange={value => setDraft({ ...draft, [f.name]: value })}
    />
  );
  const run = (action: () => Promise<void>) => {
    setBusy(true);
    void action().finally(() => setBusy(false));
  };
  return (
    <form
      className="jp-tfgpu-PolicyForm"
      // The server validates, and its message names the field: one voice for every error.
      noValidate
      onSubmit={event => {
        event.preventDefault();
        run(() => props.onSave(draft));
      }}
    >
      {conflict && (
        <div className="jp-tfgpu-Banner" role="alert">
          <span>
            This notebook&apos;s policy was changed elsewhere while you were editing. Save keeps
            your edits; Reload shows the saved policy and drops them.
          </span>
          <button type="button" className="jp-mod-styled" onClick={adopt}>
            Reload
          </button>
        </div>
      )}
      {locked && (
        <p className="jp-tfgpu-Note">
          The admin does not allow per-notebook policies; the admin defaults apply.
        </p>
      )}
      <fieldset disabled={locked || busy}>
        {PRIMARY_FIELDS.map(name => fields.find(f => f.name === name))
          .filter((f): f is IPolicyField => f !== undefined)
          .map(field)}
        {more.length > 0 && (
          <details
            className="jp-tfgpu-More"
            open={more.some(f => own[f.name] !== null && own[f.name] !== undefined)}
          >
            <summary>More settings ({more.length})</summary>
            {more.map(field)}
          </details>
        )}
      </fieldset>
      {error && (
        <div className="jp-tfgpu-Error" role="alert">
          {error}
        </div>
      )}
      <div className="jp-tfgpu-Buttons">
        <button
          type="submit"
          className="jp-mod-styled jp-mod-accept"
          disabled={locked || busy || draftText === ownText}
        >
          Save
        </button>
        <button
          type="button"
          className="jp-mod-styled jp-mod-reject"
          disabled={locked || busy || description.policy === null}
          title="Remove this notebook's own policy, so the admin defaults apply"
          onClick={() => run(props.onReset)}
        >
          Use defaults
        </button>
      </div>
    </form>
  );
}

/** Props of one field. */
interface IFieldProps {
  field: IPolicyField;
  limit: IFieldLimit;
  value: unknown;
  effective: unknown;
  source: Source;
  gpus: IGpu[];
  /** Another element whose text describes this control too (how the running cap is held). */
  alsoDescribedBy?: string;
  /** How this server would hold the field's value (the memory limit, no kernel running). */
  held?: string | null;
  onChange: (value: unknown) => void;
}

/** A label, an input matching the field's type, and what is in force now. */
function Field(props: IFieldProps): JSX.Element {
  const { field, limit, effective, source } = props;
  const id = `jp-tfgpu-field-${field.name}`;
  const admin = source && SOURCES[source];
  // A value the cap set already says the cap; its "at most" note would say it twice.
  const note = source === 'cap' ? undefined : limit.note;
  const hinted = Boolean(admin || note);
  // A screen reader reads the admin's hint with the control, as sighted users see it beside it.
  const describedBy =
    [hinted ? `${id}-hint` : null, props.held ? `${id}-held` : null, props.alsoDescribedBy]
      .filter(Boolean)
      .join(' ') || undefined;
  return (
    <div className="jp-tfgpu-Field" title={field.description}>
      {field.kind === 'devices' ? (
        <Devices {...props} id={id} describedBy={describedBy} />
      ) : (
        <>
          <label htmlFor={id}>{field.title}</label>
          <Input {...props} id={id} describedBy={describedBy} />
        </>
      )}
      {hinted && (
        <div className="jp-tfgpu-Hint" id={`${id}-hint`}>
          {admin && `${admin}: ${describeValue(field, effective)}`}
          {admin && note && ' \u00b7 '}
          {note}
        </div>
      )}
      {props.held && (
        <div className="jp-tfgpu-Hint jp-tfgpu-Held" id={`${id}-held`}>
          {props.held}
        </div>
      )}
    </div>
  );
}

/** The input for a boolean, number, string, enum or list field. */
function Input(props: IFieldProps & { id: string; describedBy?: string }): JSX.Element {
  const { field, limit, value, onChange, id, describedBy } = props;
  switch (field.kind) {
    case 'boolean':
    case 'enum': {
      const options = field.kind === 'boolean' ? [true, false] : (field.options ?? []);
      const shown = limit.forced !== undefined ? limit.forced : value;
      // A value the form has no choice for shows as "Not set" (the draft keeps it).
      return (
        <select
          id={id}
          aria-describedby={describedBy}
          className="jp-mod-styled"
          value={shown === null || !fieldAccepts(field, shown) ? '' : JSON.stringify(shown)}
          disabled={limit.forced !== undefined}
          onChange={e => onChange(e.target.value === '' ? null : JSON.parse(e.target.value))}
        >
          <option value="">Not set</option>
          {options.map(option => (
            <option key={String(option)} value={JSON.stringify(option)}>
              {typeof option === 'boolean' ? (option ? 'On' : 'Off') : option}
            </option>
          ))}
        </select>
      );
    }
    case 'integer':
    case 'number':
      return (
        <input
          id={id}
          aria-describedby={describedBy}
          type="number"
          className="jp-mod-styled"
          placeholder="Not set"
          min={field.minimum}
          max={limit.maximum ?? field.maximum}
          step={field.kind === 'integer' ? 1 : 'any'}
          value={value === null ? '' : String(value)}
          onChange={e => onChange(e.target.value === '' ? null : Number(e.target.value))}
        />
      );
    default: {
      const text = Array.isArray(value) ? value.join(', ') : ((value as string | null) ?? '');
      return (
        <input
          id={id}
          aria-describedby={describedBy}
          type="text"
          className="jp-mod-styled"
          placeholder={field.kind === 'list' ? 'Not set (comma-separated)' : 'Not set'}
          value={text}
          onChange={e => {
            const raw = e.target.value;
            const list = raw.split(',').map(s => s.trim());
            onChange(raw === '' ? null : field.kind === 'list' ? list.filter(Boolean) : raw);
          }}
        />
      );
    }
  }
}

/** Visible GPUs: not set (every allowed GPU), a named mode ("auto"), CPU only, or ticked GPUs. */
function Devices(props: IFieldProps & { id: string; describedBy?: string }): JSX.Element {
  const { field, limit, gpus, onChange, id } = props;
  const value = Array.isArray(props.value) ? (props.value as (number | string)[]) : null;
  const mode = value === null ? JSON.stringify(props.value) : value.length ? 'some' : 'cpu';
  const allowed = (gpu: IGpu) =>
    !limit.allowed || limit.allowed.some(a => a === gpu.index || a === gpu.uuid);
  const picks = (gpu: IGpu) => !!value?.some(v => v === gpu.index || v === gpu.uuid);
  const firstAllowed = gpus.find(allowed);
  const radio = (key: string, label: string, next: unknown, disabled = false) => (
    <label className="jp-tfgpu-Choice" key={key}>
      <input
        type="radio"
        name={id}
        checked={mode === key}
        disabled={disabled}
        onChange={() => onChange(next)}
      />
      {label}
    </label>
  );
  return (
    <fieldset className="jp-tfgpu-Devices" id={id} aria-describedby={props.describedBy}>
      <legend>{field.title}</legend>
      {radio('null', 'Not set: every allowed GPU', null)}
      {(field.options ?? []).map(option =>
        radio(JSON.stringify(option), DEVICE_MODES[option] ?? String(option), option)
      )}
      {radio('cpu', 'CPU only', [])}
      {radio('some', 'These GPUs:', firstAllowed ? [firstAllowed.index] : [], !firstAllowed)}
      <div className="jp-tfgpu-GpuChoices">
        {gpus.map(gpu => (
          <label
            key={gpu.index}
            className="jp-tfgpu-Choice"
            title={allowed(gpu) ? gpu.name : 'The admin does not allow this GPU'}
          >
            <input
              type="checkbox"
              checked={picks(gpu)}
              disabled={
                mode !== 'some' || !allowed(gpu) || (picks(gpu) && (value?.length ?? 0) <= 1)
              }
              onChange={e =>
                onChange(
                  e.target.checked
                    ? [...(value ?? []), gpu.index]
                    : (value ?? []).filter(v => v !== gpu.index && v !== gpu.uuid)
                )
              }
            />
            GPU {gpu.index}
          </label>
        ))}
      </div>
    </fieldset>
  );
}
