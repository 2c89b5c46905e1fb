"""JSON rows to a Parquet file, streamed in row groups, with a schema every row fits.

The columns are the keys of every row, in order of first appearance; each column's type is
inferred from all of its values as `pa.Table.from_pylist` would, one row group at a time, then
unified. Values no single type holds (bool and int, text and an object) stop the write with one
line naming the column, both types and the row. Parquet has no struct without fields: an object
that is empty in every row (`{}`) is written as null.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

ROW_GROUP_BYTES = 8 << 20  # JSON bytes per row group (the rows held at once)


class ColumnClash(ValueError):
    """Two rows give one Parquet column types that do not mix (bool and int, text and object, ...)."""


def write_parquet(path: Path | BinaryIO, lines: Callable[[], Iterable[bytes]]) -> None:
    """Write JSON lines as a Parquet file, streamed, in row groups of about ROW_GROUP_BYTES of JSON.

    `lines()` is called twice (two passes, neither holding more than a row group): the first
    settles the schema, the second converts each group to it and writes it. The columns are the
    keys of every row, in order of first appearance (a row without one has null there); each
    column's type is inferred from all of its values as `pa.Table.from_pylist` would, group by
    group, then unified (ints that turn float later are float throughout, a dict column is a
    struct of the fields of every row in order of first appearance, a column that is None in
    some groups takes the others' type). Rows that all have the same keys thus give exactly
    `from_pylist(all rows)`. Values that no type holds together (bool and int, text and a dict)
    raise ColumnClash naming the column, the two types and the row (1-based, in `lines` order).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    names: dict[str, None] = {}  # every row's keys, in order of first appearance
    types: dict[str, pa.DataType] = {}
    count = 0
    for group in _row_groups(lines()):
        for row in group:
            names.update(dict.fromkeys(row))
        for name in names:
            try:
                found = pa.infer_type([row.get(name) for row in group])
                types[name] = found if name not in types else _unify(types[name], found)
            except (pa.ArrowException, OverflowError) as exc:
                raise _clash(group, count, {name: types.get(name, pa.null())}, exc) from None
        count += len(group)
    if not count:  # no rows: what from_pylist([]) gives, a table without columns
        pq.write_table(pa.Table.from_pylist([]), path)
        return
    written = {name: _writable(types[name]) for name in names}
    emptied = [name for name in names if written[name] != types[name]]  # holding `{}` somewhere
    schema = pa.schema([(name, written[name]) for name in names])
    count = 0
    with pq.ParquetWriter(path, schema) as writer:
        for group in _row_groups(lines()):
            for row in group:
                for name in emptied:
                    if name in row:
                        row[name] = _fit(row[name], written[name])
            try:
                table = pa.Table.from_pylist(group, schema=schema)
            except (pa.ArrowException, OverflowError) as exc:
                raise _clash(group, count, types, exc) from None
            writer.write_table(table)
            count += len(group)


def _writable(kind: Any) -> Any:
    """`kind` with every struct without fields (an object empty in every row) made null."""
    import pyarrow as pa

    if pa.types.is_struct(kind):
        if kind.num_fields == 0:
            return pa.null()
        return pa.struct([field.with_type(_writable(field.type)) for field in kind])
    if pa.types.is_list(kind):
        return pa.list_(_writable(kind.value_type))
    if pa.types.is_large_list(kind):
        return pa.large_list(_writable(kind.value_type))
    return kind


def _fit(value: Any, kind: Any) -> Any:
    """`value` with the objects that `_writable` made null (in type `kind`) replaced by None."""
    import pyarrow as pa

    if value is None or pa.types.is_null(kind):
        return None
    if isinstance(value, dict) and pa.types.is_struct(kind):
        return {field.name: _fit(value.get(field.name), field.type) for field in kind}
    if isinstance(value, list) and (pa.types.is_list(kind) or pa.types.is_large_list(kind)):
        return [_fit(item, kind.value_type) for item in value]
    return value


def _row_groups(lines: Iterable[bytes]) -> Iterator[list[dict[str, Any]]]:
    group: list[dict[str, Any]] = []
    size = 0
    for line in lines:
        group.append(json.loads(line))
        size += len(line)
        if size >= ROW_GROUP_BYTES:
            yield group
            group.clear()  # the caller is done with it: never two groups held at once
            size = 0
    if group:
        yield group


def _unify(a: Any, b: Any) -> Any:
    """The type one inference over the values of both types would give (pyarrow's permissive promotion)."""
    import pyarrow as pa

    if a == b:
        return a
    merged = pa.unify_schemas([pa.schema([("c", a)]), pa.schema([("c", b)])], promote_options="permissive")
    return merged.field("c").type


def _clash(group: list[dict[str, Any]], first: int, types: dict[str, Any], exc: BaseException) -> ColumnClash:
    """The first value of `group` (rows `first`+1, ...) that does not fit its column: the column's
    type so far (`types`, growing with the rows before it) and the value's, as one line."""
    import pyarrow as pa

    types = dict(types)
    for number, row in enumerate(group, first + 1):
        for name, known in types.items():
            value = row.get(name)
            found = _value_clash(value, known, name)
            if found is not None:
                column, had, got = found
                where = f"row {number}" + (f", id {row['id']!r}" if isinstance(row.get("id"), str) else "")
                return ColumnClash(f"column {column!r} holds both {had} and {got} values ({where}); "
                                   "a Parquet column takes one type")
            with contextlib.suppress(pa.ArrowException, OverflowError):
                types[name] = _unify(known, pa.infer_type([value]))
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return ColumnClash(f"rows {first + 1}-{first + len(group)} do not fit one Parquet schema: {reason}")


def _value_clash(value: Any, known: Any, path: str) -> tuple[str, str, str] | None:
    """Where `value` does not fit type `known` (column `path`): (the field's path, its type, the
    value's), or None. Dicts and lists are followed down to the field or item that clashes."""
    import pyarrow as pa

    if value is None:
        return None
    if pa.types.is_null(known) and isinstance(value, (dict, list)):
        known = pa.struct([]) if isinstance(value, dict) else pa.list_(pa.null())
    if isinstance(value, dict) and pa.types.is_struct(known):
        for key, item in value.items():
            index = known.get_field_index(key)
            found = _value_clash(item, known.field(index).type if index >= 0 else pa.null(), f"{path}.{key}")
            if found is not None:
                return found
        return None
    if isinstance(value, list) and (pa.types.is_list(known) or pa.types.is_large_list(known)):
        item_type = known.value_type
        for item in value:
            found = _value_clash(item, item_type, f"{path}[]")
            if found is not None:
                return found
            item_type = _unify(item_type, pa.infer_type([item]))
        return None
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        return path, _type_name(known), "integer beyond 64-bit"  # inferred as int64, fails to convert
    try:
        got = pa.infer_type([value])
    except (pa.ArrowException, OverflowError):
        return path, _type_name(known), type(value).__name__
    try:
        _unify(known, got)
    except pa.ArrowException:
        return path, _type_name(known), _type_name(got)
    return None


def _type_name(kind: Any) -> str:
    import pyarrow as pa

    if pa.types.is_struct(kind):
        return "object"
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return "list"
    return str(kind)
