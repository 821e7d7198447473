"""The leaderboard: one Parquet row per scored submission, appended atomically by concurrent scoring runs.

Every column is documented in docs/leaderboard.md; bump ``SCHEMA_VERSION`` (and that document) whenever a column is
added, removed or changes meaning. Accuracies are fractions in [0, 1]; sizes are bytes; MACs are for one 1-s clip.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import math
import numbers
import os
import tempfile
import uuid
from collections.abc import Iterable, Iterator
import dataclasses
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bench import provenance
from bench.errors import BoardError

SCHEMA_VERSION = 6
VERSION_KEY = b"ascbench.schema_version"

KINDS = ("system", "teacher", "package", "ablation")
STATUSES = ("ok", "failed")
DEPLOY_DTYPES = ("float16", "float32", "int8", "mixed")
ENERGY_METHODS = ("rapl", "cpu-load-estimate")
TEACHER_GATES = ("pass", "flagged", "excluded")
FP16_ARITHMETICS = ("native", "fp32-kernels")  # bench.score.fp16
ENUMS = {"kind": KINDS, "status": STATUSES, "deploy_dtype": DEPLOY_DTYPES, "energy_method": ENERGY_METHODS,
         "teacher_gate": TEACHER_GATES, "fp16_arithmetic": FP16_ARITHMETICS}

REQUIRED = frozenset({"submission", "system", "kind", "status"})
FRACTIONS = ("macro_acc", "macro_acc_ci_low", "macro_acc_ci_high", "overall_acc", "acc_known", "acc_unseen",
             "acc_real", "acc_seen", "int8_macro_acc", "val_macro_acc")
# stored as JSON text: portable to CSV/pandas/any Parquet reader, unlike map types that pandas turns into tuples
JSON_COLUMNS = ("acc_per_device", "acc_per_class", "confusion", "complexity_per_device", "counters", "stages",
                "intervals", "seed_rows", "external_data")

_STR, _F64, _I64, _BOOL, _BIN = pa.string(), pa.float64(), pa.int64(), pa.bool_(), pa.binary()
_TS = pa.timestamp("us", tz="UTC")

SCHEMA = pa.schema(
    [
        ("schema_version", pa.int16()),
        # identity
        ("row_id", _STR), ("submission", _STR), ("system", _STR), ("variant", _STR), ("kind", _STR),
        ("is_teacher", _BOOL), ("seed", _I64), ("profile", _STR), ("dataset", _STR), ("dataset_fingerprint", _STR),
        ("split", _STR), ("train_split", _STR), ("config_hash", _STR), ("notes", _STR), ("run_dir", _STR),
        ("stages", _STR), ("isolation", _STR), ("row_checksum", _STR),
        # status
        ("status", _STR), ("error", _STR),
        # accuracy
        ("macro_acc", _F64), ("macro_acc_ci_low", _F64), ("macro_acc_ci_high", _F64), ("overall_acc", _F64),
        ("log_loss", _F64), ("acc_known", _F64), ("acc_unseen", _F64), ("acc_real", _F64), ("acc_seen", _F64),
        ("acc_per_device", _STR), ("acc_per_class", _STR), ("confusion", _STR), ("n_clips", _I64),
        ("ci_method", _STR), ("intervals", _STR), ("clips_digest", _STR), ("clip_predictions", _BIN),
        # validation split (carved from training by location): what selection and the teacher gate look at
        ("val_macro_acc", _F64), ("teacher_gate", _STR),
        # training budget (every fit of the run's stages, teachers and pre-training included) and external data
        ("train_steps", _I64), ("train_samples", _I64), ("external_data", _STR),
        # seeds: one row per seed, plus an aggregate row over them
        ("n_seeds", _I64), ("seeds", _STR), ("seed_rows", _STR), ("macro_acc_seed_std", _F64),
        # deployment precision
        ("deploy_dtype", _STR), ("fp16_arithmetic", _STR), ("int8_macro_acc", _F64), ("int8_size_bytes", _I64),
        ("int8_error", _STR),
        # complexity
        ("max_macs", _I64), ("max_param_bytes", _I64), ("params", _I64), ("thop_macs", _I64),
        ("dispatcher_macs", _I64), ("complexity_per_device", _STR), ("compliant", _BOOL),
        ("compliance_reasons", _STR), ("counters", _STR),
        # energy
        ("energy_j_per_clip", _F64), ("energy_method", _STR), ("analytic_energy_uj_per_clip", _F64),
        # provenance
        ("harness_version", _STR), ("harness_source", _STR), ("git_commit", _STR), ("git_dirty", _BOOL),
        ("python", _STR), ("torch", _STR),
        ("torchaudio", _STR), ("torchinfo", _STR), ("thop", _STR), ("codecarbon", _STR), ("lightning", _STR),
        ("cpu_model", _STR), ("gpu_model", _STR), ("threads", _I64), ("batch_size", _I64), ("started_at", _TS),
        ("finished_at", _TS), ("wall_s_train", _F64), ("wall_s_score", _F64), ("clips_per_s", _F64), ("host", _STR),
    ],
    metadata={VERSION_KEY: str(SCHEMA_VERSION).encode()},
)
COLUMNS = tuple(SCHEMA.names)
# columns each schema version added: a row's checksum covers the columns of the version it was written with
ADDED_IN = {4: ("ci_method", "intervals", "clips_digest", "clip_predictions", "n_seeds", "seeds", "seed_rows",
                "macro_acc_seed_std"),
            5: ("val_macro_acc", "teacher_gate", "train_steps", "train_samples", "external_data"),
            6: ("fp16_arithmetic",)}


# ---------------------------------------------------------------------------------------------------------- rows


def make_row(**fields) -> dict:
    """A complete, validated row: caller's fields plus identity and provenance defaults.

    Unknown or missing required keys raise ``ValueError``; dict/list values of JSON columns are encoded.
    """
    unknown = sorted(set(fields) - set(COLUMNS))
    if unknown:
        raise ValueError(f"unknown leaderboard column(s): {', '.join(unknown)} (see docs/leaderboard.md)")
    missing = sorted(REQUIRED - {k for k, v in fields.items() if v is not None})
    if missing:
        raise ValueError(f"missing required leaderboard column(s): {', '.join(missing)}")
    defaults = {"schema_version": SCHEMA_VERSION, "row_id": uuid.uuid4().hex,
                "is_teacher": fields["kind"] == "teacher", "finished_at": provenance.utc_now(), **provenance.collect()}
    row = {name: None for name in COLUMNS} | defaults | fields
    for name in JSON_COLUMNS:
        row[name] = _encode_json(name, row[name])
    validate_row(row)
    return row


def validate_row(row: dict) -> None:
    """Raise ``ValueError`` naming the first column that breaks the schema or the rules the board relies on."""
    if set(row) != set(COLUMNS):
        raise ValueError("rows must carry exactly the schema's columns; build them with make_row()")
    for field in SCHEMA:
        value = row[field.name]
        try:
            if pa.types.is_integer(field.type) and value is not None and not isinstance(value, numbers.Integral):
                raise TypeError("arrow would silently truncate it")
            pa.array([value], type=field.type)
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise ValueError(f"column {field.name!r}: {value!r} is not {field.type} ({exc})") from None
    for name, allowed in ENUMS.items():
        if row[name] is not None and row[name] not in allowed:
            raise ValueError(f"column {name!r}: {row[name]!r} is not one of {', '.join(allowed)}")
    for name in FRACTIONS:
        value = row[name]
        if value is not None and not math.isnan(value) and not 0.0 <= value <= 1.0:
            raise ValueError(f"column {name!r}: {value} is not a fraction in [0, 1] (accuracies are not percent)")
    if row["status"] == "failed" and not row["error"]:
        raise ValueError("a failed row needs an 'error' saying why")
    if row["status"] == "ok" and row["macro_acc"] is None:
        raise ValueError("an ok row needs 'macro_acc'")


def _encode_json(name: str, value):
    """JSON text for a JSON column; strings must already be valid JSON."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"column {name!r} holds invalid JSON: {exc}") from None
        return value
    try:
        return json.dumps(value, default=_plain)  # keys keep their order: class order matters for `confusion`
    except (TypeError, ValueError) as exc:
        raise ValueError(f"column {name!r} cannot be encoded as JSON: {exc}") from None


def _plain(value):
    """numpy/torch scalars and arrays, as metric code tends to hand them over, as plain Python for JSON."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# -------------------------------------------------------------------------------------------------------- reading


def read_table(path: str | os.PathLike) -> pa.Table:
    """The board at ``path`` in the current schema (older boards gain null columns); ``BoardError`` if unusable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no leaderboard at {path}")
    try:
        table = pq.read_table(path)
    except pa.ArrowException as exc:
        raise BoardError(_corrupt_message(path, f"not readable Parquet: {exc}")) from None
    return _conform(table, _file_version(table, path), path)


def read_board(path: str | os.PathLike) -> pd.DataFrame:
    """The board as a DataFrame; integer and boolean columns stay nullable instead of turning into floats."""
    nullable = {pa.int16(): pd.Int64Dtype(), _I64: pd.Int64Dtype(), _BOOL: pd.BooleanDtype()}
    return read_table(path).to_pandas(types_mapper=nullable.get)


def has_row_of(path: str | os.PathLike | None, submission: str, key: str) -> bool:
    """Whether the board holds a row of ``submission`` whose stages name the cache ``key`` (a teacher's entry):
    the same trained model scored before."""
    if path is None or not Path(path).exists():
        return False
    rows = read_table(path).select(["submission", "stages"]).to_pandas()
    rows = rows[rows["submission"] == submission]
    return bool(rows["stages"].fillna("").str.contains(key, regex=False).any())


def _file_version(table: pa.Table, path: Path) -> int:
    raw = (table.schema.metadata or {}).get(VERSION_KEY)
    if raw is None:
        raise BoardError(_corrupt_message(path, "no ascbench schema version in its metadata"))
    version = int(raw)
    if version > SCHEMA_VERSION:
        raise BoardError(f"{path} uses leaderboard schema v{version}, but this ascbench only knows up to "
                         f"v{SCHEMA_VERSION}; upgrade ascbench (git pull / pip install -U) to read or append to it.")
    return version


def _conform(table: pa.Table, version: int, path: Path) -> pa.Table:
    """Reorder and cast to ``SCHEMA``: columns an older version lacked become nulls, ones it dropped go away."""
    n = table.num_rows
    arrays = []
    for field in SCHEMA:
        if field.name in table.column_names:
            try:
                arrays.append(table[field.name].cast(field.type))
            except pa.ArrowException as exc:
                raise BoardError(_corrupt_message(path, f"column {field.name!r} has the wrong type: {exc}")) from None
        elif field.name == "schema_version":  # rows from before the column existed were written at the file version
            arrays.append(pa.array([version] * n, type=field.type))
        else:
            arrays.append(pa.nulls(n, type=field.type))
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def _corrupt_message(path: Path, why: str) -> str:
    return (f"{path} is not a usable ascbench leaderboard ({why}). It was left untouched. Restore it "
            f"(`git checkout -- {path}` if it is tracked) or move it aside, then re-score to rebuild it.")


def check_board(path: str | os.PathLike) -> BoardAudit:
    """Before any work: refuse a board that exists but cannot take rows (``BoardError``; a missing one is fine),
    and audit the rows it holds (edits made outside ascbench are reported, never ranked)."""
    path = Path(path)
    if path.exists():
        return audit_board(path, read_table(path))
    if not os.access(_existing_parent(path), os.W_OK):
        raise BoardError(f"{path}: cannot create the board there (no write permission in "
                         f"{_existing_parent(path)}); pass another --board")
    return BoardAudit()


def _existing_parent(path: Path) -> Path:
    for parent in path.absolute().parents:
        if parent.exists():
            return parent
    return Path("/")


# -------------------------------------------------------------------------------------------------------- writing


def append_rows(board_path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Append ``rows`` (from ``make_row``) to the board and return its new row count.

    Writers serialise on ``<board>.lock`` (flock; local file systems only) and publish with ``os.replace``, so
    concurrent appends all land, readers never see a half-written file, and a crash leaves the old board intact.
    """
    rows = list(rows)
    for row in rows:
        validate_row(row)
    board = Path(board_path)
    board.parent.mkdir(parents=True, exist_ok=True)
    with _locked(board):
        _remove_stale_temps(board)
        old = read_table(board) if board.exists() else SCHEMA.empty_table()
        if not rows:
            return old.num_rows
        records = pa.Table.from_pylist(rows, schema=SCHEMA).to_pylist()
        for record in records:
            record[CHECKSUM] = row_checksum(record)
        table = pa.concat_tables([old, pa.Table.from_pylist(records, schema=SCHEMA)])
        _write_atomic(table, board)
        _journal(board, records)
        return table.num_rows


# ------------------------------------------------------------------------------------------------------ integrity

CHECKSUM = "row_checksum"


def row_checksum(record: dict) -> str:
    """SHA-256 over a row's values (every column of its schema version but the checksum itself), as Arrow hands
    them back; binary values enter by their own SHA-256."""
    later = {c for version, cols in ADDED_IN.items() if version > (record.get("schema_version") or 0) for c in cols}
    payload = {k: v for k, v in _jsonable(record).items() if k != CHECKSUM and k not in later}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _jsonable(record: dict) -> dict:
    """The record with binary values replaced by ``sha256:<hex>`` (journals and checksums hold no blobs)."""
    return {k: "sha256:" + hashlib.sha256(v).hexdigest() if isinstance(v, bytes) else v for k, v in record.items()}


def journal_path(board: Path) -> Path:
    """Where this machine keeps a copy of every row it wrote to ``board`` (outside the board's folder)."""
    from bench.paths import data_home

    return data_home() / "boards" / (hashlib.sha1(str(Path(board).resolve()).encode()).hexdigest()[:16] + ".jsonl")


def _journal(board: Path, records: list[dict]) -> None:
    path = journal_path(board)
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(board.read_bytes()).hexdigest()
    with open(path, "a") as f:
        for record in records:
            f.write(json.dumps({"row": _jsonable(record)}, default=str) + "\n")
        f.write(json.dumps({"board": str(board.resolve()), "file_sha256": digest}) + "\n")


@dataclasses.dataclass
class BoardAudit:
    """What ``audit_board`` found: rows changed, removed or unverifiable since ascbench wrote them."""

    edited: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # row_id -> what changed
    removed: list[str] = dataclasses.field(default_factory=list)            # "row_id (submission)"
    unverified: int = 0                                          # rows written before checksums existed
    file_changed: bool = False                                   # the file differs from what ascbench last wrote

    @property
    def clean(self) -> bool:
        return not (self.edited or self.removed or self.file_changed)

    def lines(self, board: Path) -> list[str]:
        out = [f"{board}: row {row_id} was edited outside ascbench: {'; '.join(changes)}"
               for row_id, changes in self.edited.items()]
        out += [f"{board}: row {what} was removed outside ascbench" for what in self.removed]
        if self.file_changed and not out:
            out.append(f"{board}: the file changed outside ascbench since it last wrote it (rows still verify)")
        return out


def audit_board(board: str | os.PathLike, table: pa.Table | None = None) -> BoardAudit:
    """Check every row's checksum and compare with this machine's journal of what it wrote (which says what
    changed, and which rows went missing)."""
    board = Path(board)
    records = (table if table is not None else read_table(board)).to_pylist()
    written: dict[str, dict] = {}
    last_digest = None
    path = journal_path(board)
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                entry = json.loads(line)
                if "row" in entry:
                    written[entry["row"]["row_id"]] = entry["row"]
                else:
                    last_digest = entry.get("file_sha256")
    audit = BoardAudit()
    present = set()
    for record in records:
        present.add(record["row_id"])
        original = written.get(record["row_id"])
        if record.get(CHECKSUM) is None:
            audit.unverified += 1
        elif row_checksum(record) != record[CHECKSUM] or (original and original[CHECKSUM] != record[CHECKSUM]):
            audit.edited[record["row_id"]] = _changes(original, record)
    audit.removed = [f"{row_id} ({row['submission']})" for row_id, row in written.items() if row_id not in present]
    if last_digest is not None and board.exists():
        audit.file_changed = hashlib.sha256(board.read_bytes()).hexdigest() != last_digest
    return audit


def _changes(original: dict | None, record: dict, limit: int = 5) -> list[str]:
    if original is None:
        return ["its checksum no longer matches (no copy of the original on this machine)"]
    record = _jsonable(record)
    diffs = [f"{k} {original.get(k)!r} → {record.get(k)!r}" for k in record
             if k not in (CHECKSUM,) and str(original.get(k)) != str(record.get(k))]
    return diffs[:limit] + ([f"and {len(diffs) - limit} more"] if len(diffs) > limit else []) or \
        ["its checksum was rewritten"]


@contextlib.contextmanager
def _locked(board: Path) -> Iterator[None]:
    """Exclusive writer lock on a sidecar file (never deleted: removing a lock file lets two writers in)."""
    with open(board.with_name(board.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # closing the handle releases the lock, also when the process dies


def _temp_prefix(board: Path) -> str:
    return f".{board.name}."


def _remove_stale_temps(board: Path) -> None:
    """Delete temp files of writers that died before publishing; safe because only the lock holder writes temps."""
    for stale in board.parent.glob(glob.escape(_temp_prefix(board)) + "*.tmp"):
        stale.unlink(missing_ok=True)


def _write_atomic(table: pa.Table, board: Path) -> None:
    """Write next to the board, fsync, then rename over it: the board is either the old or the new file."""
    fd, temp = tempfile.mkstemp(dir=board.parent, prefix=_temp_prefix(board), suffix=".tmp")
    try:
        os.fchmod(fd, board.stat().st_mode & 0o777 if board.exists() else 0o644)
        with os.fdopen(fd, "wb") as handle:
            pq.write_table(table, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, board)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(board.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


# ------------------------------------------------------------------------------------------------------- querying


def filter_board(df: pd.DataFrame, *, system: str | None = None, profile: str | None = None,
                 dataset: str | None = None, kind: str | None = None) -> pd.DataFrame:
    """Rows whose given columns equal the given values; ``None`` means no constraint."""
    wanted = {"system": system, "profile": profile, "dataset": dataset, "kind": kind}
    mask = pd.Series(True, index=df.index)
    for column, value in wanted.items():
        if value is not None:
            mask &= df[column] == value
    return df[mask.fillna(False).astype(bool)]


RUN_IDENTITY = ("system", "submission", "variant", "kind", "profile", "dataset_fingerprint", "split", "config_hash")


def _test_set_key(df: pd.DataFrame) -> pd.Series:
    """What identifies the clips a row was scored on: dataset fingerprint and split (the dataset's name for rows
    written without a fingerprint)."""
    return df["dataset_fingerprint"].fillna("dataset " + df["dataset"].fillna("?")) + "/" + df["split"].fillna("")


def test_sets(df: pd.DataFrame) -> pd.DataFrame:
    """The test sets rows were scored on, with their row counts, largest (then most recent) first."""
    scored = df[df["status"] == "ok"].assign(_test_set=_test_set_key)
    if scored.empty:
        return pd.DataFrame(columns=["_test_set", "dataset_fingerprint", "dataset", "profile", "rows", "latest"])
    out = scored.groupby("_test_set").agg(dataset_fingerprint=("dataset_fingerprint", "first"),
                                          dataset=("dataset", "first"), profile=("profile", "first"),
                                          rows=("row_id", "size"), latest=("finished_at", "max")).reset_index()
    return out.sort_values(["rows", "latest"], ascending=False, kind="stable").reset_index(drop=True)


def comparable(df: pd.DataFrame, test_set: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows scored on one test set (``test_set``: a fingerprint or its prefix; default the largest group), plus
    the test sets left out. Failed rows of that dataset stay (they say why they have no score)."""
    sets = test_sets(df)
    if sets.empty:
        return df, sets
    if test_set is None:
        chosen = sets.iloc[0]
    else:
        hits = sets[sets["dataset_fingerprint"].fillna("").str.startswith(test_set)]
        if hits.empty:
            raise BoardError(f"no rows scored on test set {test_set!r}; the board has: "
                             + ", ".join(f"{r.dataset_fingerprint} ({r.dataset}, {r.rows} rows)"
                                         for r in sets.itertuples()))
        chosen = hits.iloc[0]
    keep = (_test_set_key(df) == chosen["_test_set"]) | ((df["status"] == "failed") &
                                                         (df["dataset"] == chosen["dataset"]))
    return df[keep], sets.drop(index=chosen.name)


def collapse_reruns(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run identity: the latest seed aggregate where one exists (its seeds' rows hidden), else the
    latest row of each seed. Re-running the same configuration therefore never adds a line."""
    aggregate = df["n_seeds"].fillna(1) > 1
    key = [c for c in RUN_IDENTITY]
    latest_agg = df[aggregate].sort_values("finished_at").groupby(key, dropna=False).tail(1)
    members = {m for rows in latest_agg["seed_rows"].dropna() for m in json.loads(rows)}
    covered = set(map(tuple, latest_agg[key].astype(str).to_numpy()))
    singles = df[~aggregate & ~df["row_id"].isin(members)]
    singles = singles[pd.Series([tuple(v) not in covered for v in singles[key].astype(str).to_numpy()],
                                index=singles.index, dtype=bool)]
    singles = singles.sort_values("finished_at").groupby([*key, "seed"], dropna=False).tail(1)
    return df.loc[sorted(set(latest_agg.index) | set(singles.index))]


def rank_board(df: pd.DataFrame, unranked: Iterable[str] = ()) -> pd.DataFrame:
    """Sorted best first with a ``rank`` column: compliant submissions ranked by macro accuracy; below them, without
    a rank, the rows that do not compete (non-compliant or uncountable models, teachers, which ignore the limits, and
    rows in ``unranked``, e.g. edited outside ascbench); failed rows last. Ties share a rank."""
    scored = (df["status"] == "ok") & df["macro_acc"].notna()
    competing = (scored & ~df["is_teacher"].fillna(False) & df["compliant"].fillna(False).astype(bool)
                 & ~df["row_id"].isin(set(unranked)))
    ranks = df["macro_acc"].where(competing).rank(ascending=False, method="min")
    tier = pd.Series(2, index=df.index).where(~scored, 1).where(~competing, 0)
    ranked = df.assign(rank=ranks.astype("Int64"), _tier=tier, _sort=df["macro_acc"].where(scored))
    ranked = ranked.sort_values(["_tier", "_sort", "submission"], ascending=[True, False, True],
                                na_position="last", kind="stable")
    return ranked[["rank", *df.columns]].reset_index(drop=True)


def select_row(df: pd.DataFrame, ref: str) -> pd.Series:
    """A row by id (or a unique id prefix of 6+ characters) or by submission name, ``NAME@VARIANT`` to pick a variant
    (``NAME@`` for none). A name picks the latest seed aggregate of that submission, else its latest row."""
    ids = df[df["row_id"].str.startswith(ref)] if len(ref) >= 6 else df.iloc[0:0]
    if len(ids) == 1:
        return ids.iloc[0]
    if len(ids) > 1:
        raise BoardError(f"row id prefix {ref!r} matches {len(ids)} rows; give more characters")
    name, _, variant = ref.partition("@")
    rows = df[(df["submission"] == name) & (df["status"] == "ok")]
    if "@" in ref:
        rows = rows[rows["variant"].fillna("") == variant]
    if rows.empty:
        raise BoardError(f"no scored row with id or submission {ref!r}")
    variants = sorted(rows["variant"].fillna("").unique())
    if len(variants) > 1:
        raise BoardError(f"{name!r} has rows of several variants ({', '.join(v or '(none)' for v in variants)}); "
                         f"write {name}@VARIANT, e.g. {name}@{variants[-1]}")
    aggregates = rows[rows["n_seeds"].fillna(1) > 1]
    return (aggregates if not aggregates.empty else rows).sort_values("finished_at").iloc[-1]


def row_predictions(df: pd.DataFrame, row: pd.Series) -> list:
    """The per-clip predictions of ``row``: one per seed (an aggregate's member rows), or the row's own."""
    from bench.score.predictions import ClipPredictions, PredictionsError

    label = f"row {row['row_id'][:12]} ({row['submission']})"
    n_seeds = row.get("n_seeds")
    if not pd.isna(n_seeds) and n_seeds > 1 and isinstance(row.get("seed_rows"), str):
        ids = json.loads(row["seed_rows"])
        members = df[df["row_id"].isin(ids)]
        if len(members) != len(ids):
            raise BoardError(f"{label} aggregates {len(ids)} seed rows, but only {len(members)} are on this board")
        rows = [members.set_index("row_id").loc[i] for i in ids]
    else:
        rows = [row]
    blobs = [r.get("clip_predictions") for r in rows]
    if any(b is None or (isinstance(b, float) and pd.isna(b)) for b in blobs):
        raise BoardError(f"{label} has no per-clip predictions (scored before ascbench kept them); re-score it "
                         "(`bench score --submission RUN_DIR`) to compare it")
    try:
        return [ClipPredictions.from_bytes(b) for b in blobs]
    except PredictionsError as exc:
        raise BoardError(f"{label}: {exc}") from None
