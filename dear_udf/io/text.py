"""One parser per text format (MS MARCO TSV, TREC runs, TREC and BEIR qrels, JSON Lines, CSV), for both paths.

Nothing here opens a file. The Spark reader hands it the lines of each Arrow batch through
``mapInArrow`` (``spark/read.py``); the reader without Spark, a whole file's lines
(``formats.read_local``). So both give the same rows, the same errors and the same line
numbers: a bad line is reported as ``"<path>, line <n>: <reason>."``, with ``n`` counted
from 1 over every line of the file.

CSV is parsed a file at a time, not a line at a time, since a quoted field may hold
newlines (``parse_csv``, at the end).

The per-line rules (field separators, integer and number fields, blank lines, ids) are
``rules.py``'s.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import pyarrow as pa

from .. import schema as S
from ..exceptions import InputError
from . import rules

TEXT_FORMATS = ("tsv", "trec", "qrels")


@dataclass(frozen=True)
class TextLayout:
    """How one kind of input is laid out in one text dialect."""

    schema: pa.Schema  # the canonical columns the parser fills, in its tuple's order
    parse: Callable[[str], tuple]  # one non-blank line -> a tuple of fields, or LineError
    header: Callable[[str], bool] | None = None  # a header line, skipped where it appears first


def _tsv_corpus(line: str) -> tuple:
    doc_id, text = rules.parse_tsv_line(line)
    return doc_id, None, text  # MS MARCO passages have no title


_LAYOUTS = {
    ("queries", "tsv"): TextLayout(S.QUERIES_SCHEMA, rules.parse_tsv_line),
    ("corpus", "tsv"): TextLayout(S.CORPUS_SCHEMA, _tsv_corpus),
    ("candidates", "trec"): TextLayout(S.CANDIDATES_SCHEMA, rules.parse_trec_run_line),
    ("qrels", "trec"): TextLayout(S.QRELS_SCHEMA, rules.parse_trec_qrels_line),
    ("qrels", "beir"): TextLayout(S.QRELS_SCHEMA, rules.parse_beir_qrels_line, header=rules.is_beir_qrels_header),
}


def layout_for(kind: str, fmt: str, first_line: str | None, *, path: str) -> TextLayout:
    """The layout of ``kind`` in a ``fmt`` file whose first non-blank line is ``first_line``.

    Qrels given as ``tsv``, ``trec`` or ``qrels`` are TREC's ``qid 0 docid rel``, or BEIR's
    TSV when its header comes first.
    """
    if kind == "qrels" and fmt in TEXT_FORMATS:
        dialect = "beir" if first_line is not None and rules.is_beir_qrels_header(first_line) else "trec"
    else:
        dialect = "trec" if fmt == "qrels" else fmt
    layout = _LAYOUTS.get((kind, dialect))
    if layout is None:
        raise InputError(f"{path}: format {fmt!r} holds no {kind}.")
    return layout


def parse_lines(lines: Iterable[str | None], layout: TextLayout, *, first: bool) -> tuple[pa.RecordBatch, int | None, str | None]:
    """Parse lines in file order; blank lines carry no record.

    Args:
        lines: decoded lines without their ending (``rules.decode_line``).
        layout: from ``layout_for``.
        first: these lines start the file, so a header line among the leading ones is skipped.

    Returns:
        The rows parsed, and the index within ``lines`` and the reason of the first line
        that does not parse (None, None when all do). Rows after a bad line are not parsed.
    """
    rows: list[tuple] = []
    leading = first
    for index, line in enumerate(lines):
        if line is None or rules.is_blank(line):
            continue
        if leading and layout.header is not None and layout.header(line):
            leading = False
            continue
        leading = False
        try:
            rows.append(layout.parse(line))
        except rules.LineError as exc:
            return _table(rows, layout.schema), index, str(exc)
    return _table(rows, layout.schema), None, None


def _table(rows: list[tuple], schema: pa.Schema) -> pa.RecordBatch:
    columns = list(zip(*rows)) if rows else [()] * len(schema)
    return pa.RecordBatch.from_arrays([pa.array(c, type=f.type) for c, f in zip(columns, schema)], schema=schema)


def line_error(path: str, number: int, reason: str) -> InputError:
    """The error of a bad line, the same on both paths."""
    return InputError(f"{path}, line {number}: {reason}.")


# -- JSON Lines ------------------------------------------------------------------------------
# Read in two passes on both paths: the keys of every record (the columns are their union,
# so they can be matched to canonical names first), then the chosen keys' values as typed
# columns. Both passes skip blank lines and stop at the first line that is not an object.


def _record(line: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict):
        raise rules.LineError(f"not a JSON object: {line[:200]!r}")
    return record


def json_keys(lines: Iterable[str | None]) -> tuple[set[str], int | None, str | None]:
    """The union of the records' keys, and the index and reason of the first bad line."""
    keys: set[str] = set()
    for index, line in enumerate(lines):
        if line is None or rules.is_blank(line):
            continue
        try:
            keys.update(_record(line))
        except rules.LineError as exc:
            return keys, index, str(exc)
    return keys, None, None


def json_batch(lines: Iterable[str | None], types: dict[str, pa.DataType]) -> tuple[pa.RecordBatch, int | None, str | None]:
    """The values of the keys in ``types``, one row per record, typed by ``json_value``."""
    columns: dict[str, list] = {key: [] for key in types}
    for index, line in enumerate(lines):
        if line is None or rules.is_blank(line):
            continue
        try:
            record = _record(line)
        except rules.LineError as exc:
            return _json_columns(columns, types), index, str(exc)
        for key, column in columns.items():
            column.append(json_value(record.get(key), types[key]))
    return _json_columns(columns, types), None, None


def _json_columns(columns: dict[str, list], types: dict[str, pa.DataType]) -> pa.RecordBatch:
    schema = pa.schema([(key, types[key]) for key in columns])
    return pa.RecordBatch.from_arrays([pa.array(values, type=types[key]) for key, values in columns.items()], schema=schema)


def json_value(value: object, type_: pa.DataType) -> object:
    """A JSON value as a column of ``type_`` holds it.

    Strings: text as is; numbers, booleans, arrays and objects as their JSON text (an id
    ``123`` reads ``"123"``). Integers and numbers: JSON numbers, or text that reads as
    one; anything else, or an integer beyond 32 bits, is missing (null), as an unreadable
    first-stage rank or score is.
    """
    if value is None:
        return None
    if pa.types.is_string(type_):
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return None
    if pa.types.is_integer(type_):
        number = _number(value, int)
        if isinstance(number, float):
            number = int(number) if number.is_integer() else None
        return number if number is not None and -(2**31) <= number < 2**31 else None
    number = _number(value, float)
    return None if number is None else float(number)


def _number(value: object, parse: type) -> int | float | None:
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return parse(value.strip())
        except ValueError:
            return None
    return None


# -- CSV -------------------------------------------------------------------------------------
# RFC 4180 with a header row: fields separated by commas, a field in double quotes may hold
# commas, newlines and doubled quotes. A file is parsed whole (its quoted fields may span
# lines), so the Spark reader hands each file's bytes to ``parse_csv`` in one task
# (``spark/read.py: _read_csv``) and the reader without Spark does the same with the file it
# opens. A record is named by the line it starts on, counted from 1 over the file's lines
# (lines end at ``\n``). Each file's header names its own columns: a folder may hold files
# whose columns are named differently (``qid`` in one, ``query_id`` in another).



class RecordError(ValueError):
    """One record of a file does not parse: its first line (from 1) and the reason."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason


def csv_records(data: bytes, *, gz: bool = False) -> tuple[list[str], list[list[str]], list[int]]:
    """The header, the records and each record's first line of a CSV file's bytes.

    The bytes are gunzipped when ``gz`` (a ``.gz`` name), decoded as UTF-8 with invalid
    bytes as U+FFFD (``rules.decode_line``'s rule) and a leading BOM dropped. Blank lines
    carry no record. Header names lose surrounding spaces; values are kept as written.

    Raises:
        RecordError: no header, a record whose field count differs from the header's, a
            quoted field never closed, or a CR outside quotes.

    Example:
        >>> csv_records(b'query_id,query\\n1,"a, b"\\n')
        (['query_id', 'query'], [['1', 'a, b']], [2])
    """
    import csv
    import gzip

    if gz:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise RecordError(1, f"not a readable gzip file ({exc})") from None
    decoded = data.decode("utf-8", errors="replace").removeprefix("\ufeff")
    pieces = decoded.split("\n")
    lines = [piece + "\n" for piece in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])
    reader = csv.reader(lines, strict=True)
    header: list[str] | None = None
    records: list[list[str]] = []
    starts: list[int] = []
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            reason = "a quoted field is not closed before the end of the file" if "unexpected end of data" in str(exc) else f"not valid CSV ({exc})"
            raise RecordError(start, reason) from None
        if not row or (len(row) == 1 and rules.is_blank(row[0])):
            continue
        if header is None:
            header = [name.strip(" ") for name in row]
            continue
        if len(row) != len(header):
            raise RecordError(start, f"expected {len(header)} fields ({','.join(header)}), got {len(row)}")
        records.append(row)
        starts.append(start)
    if header is None:
        raise RecordError(1, "no header row (a CSV input starts with its column names)")
    return header, records, starts


def parse_csv(data: bytes, kind: str, mapping: Mapping[str, str], *, gz: bool = False) -> pa.RecordBatch:
    """One CSV file's ``kind`` rows (``queries``, ``corpus``, ``candidates``, ``qrels``),
    with the canonical columns and types of ``schema.INPUT_SCHEMAS[kind]``.

    Columns are chosen from the header by ``rules.resolve_columns`` (names, aliases,
    ``mapping``). Values are typed as JSON Lines' strings are (``json_value``): an empty or
    unreadable rank or score is missing (null). Ids lose surrounding spaces, and a record
    whose id is empty is refused: a CSV cell cannot say null, and an empty id names nothing.

    Raises:
        rules.ColumnError: the header lacks a column ``kind`` needs.
        RecordError: see ``csv_records``; also a record with an empty id.

    Example:
        >>> parse_csv(b"qid,text\\n1,what is a llama\\n", "queries", {}).to_pylist()
        [{'query_id': '1', 'query': 'what is a llama'}]
    """
    header, records, starts = csv_records(data, gz=gz)
    if len(set(header)) < len(header):
        raise rules.ColumnError(f"the header names a column twice: {header}.")
    chosen = rules.resolve_columns(kind, header, mapping)
    schema = S.INPUT_SCHEMAS[kind]
    columns = []
    for field in schema:
        if field.name not in chosen:
            columns.append(pa.nulls(len(records), field.type))
            continue
        index = header.index(chosen[field.name])
        values = [record[index] for record in records]
        if field.name in (S.QUERY_ID, S.DOC_ID):
            values = [rules.clean_id(v) for v in values]
            empty = next((n for n, v in enumerate(values) if not v), None)
            if empty is not None:
                raise RecordError(starts[empty], f"{chosen[field.name]} is empty")
        columns.append(pa.array([json_value(v, field.type) for v in values], type=field.type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)
