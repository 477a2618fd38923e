"""Recovers ``.proto`` source from the serialized descriptor in a protoc-generated module.

The PyPI packages that carry the two protocols' definitions (``kserve``,
``tensorflow-serving-api``, ``tensorflow``) ship generated ``*_pb2.py`` modules, not
their ``.proto`` files; each module embeds its file's ``FileDescriptorProto``. This
dev-time tool reads that (by parsing the module's text: nothing is imported or run)
and prints the file as ``.proto`` source, which ``proto/README.md`` then trims and
compiles. Usage: ``python descriptor_to_proto.py MODULE_pb2.py > file.proto``.
"""

from __future__ import annotations

import ast
import sys

from google.protobuf import descriptor_pb2

_TYPES = {
    v: k[len("TYPE_") :].lower()
    for k, v in descriptor_pb2.FieldDescriptorProto.Type.items()
    if k not in ("TYPE_MESSAGE", "TYPE_ENUM", "TYPE_GROUP")
}


def serialized(path: str) -> bytes:
    """The bytes given to ``AddSerializedFile`` in a generated module."""
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", "") == "AddSerializedFile"
            and isinstance(node.args[0], ast.Constant)
        ):
            return node.args[0].value
    raise SystemExit(f"{path}: no AddSerializedFile call")


def _type(field: descriptor_pb2.FieldDescriptorProto) -> str:
    if field.type_name:
        return field.type_name
    return _TYPES[field.type]


def _message(msg, indent: str, out: list[str], syntax: str) -> None:
    out.append(f"{indent}message {msg.name} {{")
    inner = indent + "  "
    maps = {n.name: n for n in msg.nested_type if n.options.map_entry}
    for enum in msg.enum_type:
        _enum(enum, inner, out)
    for nested in msg.nested_type:
        if not nested.options.map_entry:
            _message(nested, inner, out, syntax)
    oneofs: dict[int, list] = {}
    for field in msg.field:
        if field.HasField("oneof_index") and not field.proto3_optional:
            oneofs.setdefault(field.oneof_index, []).append(field)
    done = set()
    for field in msg.field:
        if field.HasField("oneof_index") and not field.proto3_optional:
            index = field.oneof_index
            if index in done:
                continue
            done.add(index)
            out.append(f"{inner}oneof {msg.oneof_decl[index].name} {{")
            for f in oneofs[index]:
                out.append(f"{inner}  {_type(f)} {f.name} = {f.number};")
            out.append(f"{inner}}}")
            continue
        entry = maps.get(field.type_name.rsplit(".", 1)[-1]) if field.type_name else None
        if entry is not None and field.label == field.LABEL_REPEATED:
            key, value = entry.field
            out.append(f"{inner}map<{_type(key)}, {_type(value)}> {field.name} = {field.number};")
            continue
        label = ""
        if field.label == field.LABEL_REPEATED:
            label = "repeated "
        elif field.proto3_optional or (syntax == "proto2" and field.label == field.LABEL_OPTIONAL):
            label = "optional "
        options = []
        if field.options.HasField("packed"):
            options.append(f"packed = {str(field.options.packed).lower()}")
        if field.options.deprecated:
            options.append("deprecated = true")
        suffix = f" [{', '.join(options)}]" if options else ""
        out.append(f"{inner}{label}{_type(field)} {field.name} = {field.number}{suffix};")
    for r in msg.reserved_range:
        out.append(f"{inner}reserved {r.start} to {r.end - 1};")
    for name in msg.reserved_name:
        out.append(f'{inner}reserved "{name}";')
    out.append(f"{indent}}}")


def _enum(enum, indent: str, out: list[str]) -> None:
    out.append(f"{indent}enum {enum.name} {{")
    if enum.options.allow_alias:
        out.append(f"{indent}  option allow_alias = true;")
    for value in enum.value:
        out.append(f"{indent}  {value.name} = {value.number};")
    out.append(f"{indent}}}")


def to_proto(data: bytes) -> str:
    """A serialized FileDescriptorProto as ``.proto`` source."""
    f = descriptor_pb2.FileDescriptorProto.FromString(data)
    syntax = f.syntax or "proto2"
    out = [f'syntax = "{syntax}";', "", f"package {f.package};", ""]
    out += [f'import "{d}";' for d in f.dependency]
    out.append("")
    for enum in f.enum_type:
        _enum(enum, "", out)
    for msg in f.message_type:
        _message(msg, "", out, syntax)
        out.append("")
    for service in f.service:
        out.append(f"service {service.name} {{")
        for m in service.method:
            out.append(f"  rpc {m.name}({m.input_type}) returns ({m.output_type}) {{}}")
        out.append("}")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(to_proto(serialized(sys.argv[1])))
