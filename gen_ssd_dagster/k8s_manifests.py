"""Kubernetes manifests checked offline against the API schema, without a cluster.

`kubectl apply --dry-run=client` still asks a server for its OpenAPI document, so it cannot run
here. The `kubernetes` Python client (a dependency of dagster-k8s) is generated from that same
OpenAPI document: each object kind is a model class whose `openapi_types`/`attribute_map` list the
fields and their types, and whose constructor refuses a missing required field. This walks a
manifest through those models and reports every unknown field, wrong type and missing required
field by its path, e.g. `deploy/k8s/mlflow.yaml #1 Deployment mlflow: spec.template.spec.contianers:
unknown field`.

    python -m gen_ssd_dagster.k8s_manifests deploy/k8s/*.yaml
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import yaml

# Quantities ("4", 4, "16Gi") are strings in the client's models but numbers in YAML are accepted.
_QUANTITY_PARENTS = {"limits", "requests", "capacity", "hard"}
_QUANTITY_FIELDS = {"sizeLimit"}
_PRIMITIVES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "datetime": (str,),
               "date": (str,), "object": (object,)}


def _client():
    import kubernetes.client

    return kubernetes.client


def model_class(api_version: str, kind: str):
    """The client's model of `kind` in `api_version` (apps/v1 Deployment -> V1Deployment)."""
    version = api_version.rsplit("/", 1)[-1]
    return getattr(_client(), version[0].upper() + version[1:] + kind, None)


def _check(value: Any, type_name: str, path: str, errors: list[str], quantity: bool = False) -> None:
    if value is None:
        return
    if m := re.fullmatch(r"list\[(.+)\]", type_name):
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list, got {type(value).__name__}")
            return
        for i, item in enumerate(value):
            _check(item, m.group(1), f"{path}[{i}]", errors, quantity)
        return
    if m := re.fullmatch(r"dict[\(\[]str, (.+)[\)\]]", type_name):
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a mapping, got {type(value).__name__}")
            return
        child_quantity = path.rsplit(".", 1)[-1] in _QUANTITY_PARENTS
        for k, v in value.items():
            _check(v, m.group(1), f"{path}.{k}", errors, child_quantity)
        return
    if type_name in _PRIMITIVES:
        allowed = (str, int, float) if quantity and type_name == "str" else _PRIMITIVES[type_name]
        if not isinstance(value, allowed) or (isinstance(value, bool) and type_name != "bool" and type_name != "object"):
            errors.append(f"{path}: expected {type_name}, got {type(value).__name__} {value!r}")
        return
    cls = getattr(_client(), type_name)
    if not isinstance(value, dict):
        errors.append(f"{path}: expected a {type_name} mapping, got {type(value).__name__}")
        return
    _check_model(value, cls, path, errors)


def _check_model(doc: dict, cls, path: str, errors: list[str]) -> None:
    by_key = {key: attr for attr, key in cls.attribute_map.items()}
    for key, value in doc.items():
        attr = by_key.get(key)
        where = f"{path}.{key}" if path else key
        if attr is None:
            errors.append(f"{where}: unknown field of a {cls.__name__}")
            continue
        _check(value, cls.openapi_types[attr], where, errors, key in _QUANTITY_FIELDS)
    # The generated constructor raises ValueError for a required field left out.
    kwargs = {by_key[k]: v for k, v in doc.items() if k in by_key}
    try:
        cls(**kwargs)
    except ValueError as e:
        errors.append(f"{path or cls.__name__}: {e}")


def manifest_errors(doc: Any) -> list[str]:
    """Every schema error of one manifest object ([] when it is valid)."""
    if not isinstance(doc, dict):
        return [f"a manifest must be a mapping, got {type(doc).__name__}"]
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return ["apiVersion and kind are required"]
    cls = model_class(api_version, kind)
    if cls is None:
        return [f"no {kind} in {api_version} in the Kubernetes API"]
    errors: list[str] = []
    _check_model(doc, cls, "", errors)
    return errors


def file_errors(path: str | Path) -> list[str]:
    """Every schema error of every object in a (multi-document) YAML file, named by file and object."""
    path = Path(path)
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as e:
        return [f"{path}: not YAML: {e}"]
    if not docs:
        return [f"{path}: no Kubernetes object"]
    out = []
    for i, doc in enumerate(docs, start=1):
        name = f"{doc.get('kind')} {(doc.get('metadata') or {}).get('name')}" if isinstance(doc, dict) else ""
        out += [f"{path} #{i} {name}: {e}" for e in manifest_errors(doc)]
    return out


def main(argv: list[str]) -> int:
    errors = [e for p in argv for e in file_errors(p)]
    print("\n".join(errors) or f"{len(argv)} file(s) valid")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
