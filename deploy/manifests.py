"""The Kubernetes manifests of deploy/kubernetes/, rendered and checked offline.

    python -m deploy.manifests        (validates every overlay, as `make test` does)

:func:`render` builds a kustomization the way ``kubectl kustomize`` does for the features these
manifests use (resources, images, JSON 6902 patches, strategic-merge ``$patch: delete``), so
that the checks need no cluster and no kubectl; ``tests/test_kubernetes.py`` compares it with
``kubectl kustomize`` where kubectl is installed. :func:`validate` checks each object against
the Kubernetes OpenAPI schemas that the ``kubernetes-validate`` package ships, and the custom
resources (KEDA's) against their CRDs' schemas vendored in deploy/schemas/, strictly (unknown
fields are errors) either way.
"""

from __future__ import annotations

import copy
import functools
import sys
from collections.abc import Iterator
from pathlib import Path

import yaml

KUBERNETES = Path(__file__).resolve().parent / "kubernetes"
OVERLAYS = ("base", "gpu", "scale-out")
# The custom resources the manifests use: (apiVersion, kind) -> the openAPIV3Schema of their
# CustomResourceDefinition, cut from the CRD (the file says from where, and its licence).
SCHEMAS = Path(__file__).resolve().parent / "schemas"
CUSTOM_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"): SCHEMAS / "keda.sh_scaledobjects.v1alpha1.yaml",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): SCHEMAS
    / "keda.sh_triggerauthentications.v1alpha1.yaml",
}
# The CRDs' CEL rules (x-kubernetes-validations), which jsonschema cannot evaluate, written in
# Python; a schema with a rule not here is refused, so that a new one is not skipped unseen.
CEL_RULES = {
    "!has(self.minReplicaCount) || self.minReplicaCount <= (has(self.maxReplicaCount) ? "
    "self.maxReplicaCount : 100)": lambda spec: (
        spec.get("minReplicaCount", 0) <= spec.get("maxReplicaCount", 100)
    ),
}
# The oldest Kubernetes these manifests are checked against (autoscaling/v2, seccompProfile
# and sizeLimit are older), and the newest kubernetes-validate knows.
VERSIONS = ("1.29", "1.37")


def load_yaml(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]


def apply_json6902(obj: dict, operations: list[dict]) -> dict:
    """``obj`` with the add / replace / remove / test operations applied (RFC 6902)."""
    obj = copy.deepcopy(obj)
    for op in operations:
        *parents, last = _pointer(op["path"])
        node = obj
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if op["op"] == "test":
            actual = node[int(last)] if isinstance(node, list) else node.get(last)
            if actual != op["value"]:
                raise ValueError(f"test {op['path']}: {actual!r} is not {op['value']!r}")
        elif isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            if op["op"] == "add":
                node.insert(index, op["value"])
            elif op["op"] == "replace":
                node[index] = op["value"]
            else:
                assert op["op"] == "remove", op
                del node[index]
        else:
            if op["op"] in ("replace", "remove") and last not in node:
                raise KeyError(f"{op['op']} {op['path']}: no such member")
            if op["op"] == "remove":
                del node[last]
            else:
                assert op["op"] in ("add", "replace"), op
                node[last] = op["value"]
    return obj


def _matches(obj: dict, target: dict) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    wanted = {"group": group, "version": version, "kind": obj["kind"]}
    wanted["name"] = obj["metadata"]["name"]
    return all(wanted[key] == value for key, value in target.items())


def render(directory: Path) -> list[dict]:
    """The objects of the kustomization in ``directory``."""
    config = yaml.safe_load((directory / "kustomization.yaml").read_text())
    supported = {"apiVersion", "kind", "resources", "images", "patches"}
    assert set(config) <= supported, f"render() does not know {set(config) - supported}"
    objects: list[dict] = []
    for resource in config.get("resources", []):
        path = (directory / resource).resolve()
        objects += render(path) if path.is_dir() else load_yaml(path)
    for patch in config.get("patches", []):
        operations = yaml.safe_load(
            (directory / patch["path"]).read_text() if "path" in patch else patch["patch"]
        )
        if isinstance(operations, dict):  # a strategic-merge patch: only deletions here
            objects = _delete(objects, operations)
            continue
        hits = [i for i, obj in enumerate(objects) if _matches(obj, patch["target"])]
        assert hits, f"patch target {patch['target']} matches nothing"
        for i in hits:
            objects[i] = apply_json6902(objects[i], operations)
    for image in config.get("images", []):
        for obj in objects:
            for container in pod_spec(obj).get("containers", []) if pod_spec(obj) else []:
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    tag = image.get("newTag", tag)
                    container["image"] = f"{image.get('newName', name)}:{tag}"
    return objects


def _delete(objects: list[dict], patch: dict) -> list[dict]:
    """``objects`` without the one that the strategic-merge patch ``{"$patch": "delete",
    apiVersion, kind, metadata: {name}}`` names (kustomize refuses one that names nothing)."""
    assert patch.get("$patch") == "delete", f"render() knows only `$patch: delete`: {patch}"
    key = (patch["apiVersion"], patch["kind"], patch["metadata"]["name"])
    kept = [o for o in objects if (o["apiVersion"], o["kind"], o["metadata"]["name"]) != key]
    if len(kept) != len(objects) - 1:
        raise ValueError(f"$patch: delete of {key}: no such object")
    return kept


def pod_spec(obj: dict) -> dict | None:
    """The pod template's spec of a workload, or None for other kinds."""
    return obj.get("spec", {}).get("template", {}).get("spec")


def validate(obj: dict, version: str) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``obj`` is valid in Kubernetes ``version``,
    strictly: a built-in kind by ``kubernetes_validate`` (its ``ValidationError`` is one;
    ``SchemaNotFoundError`` for a kind it has no schema of), a custom resource of
    :data:`CUSTOM_KINDS` by its CRD's schema (:func:`validate_custom`)."""
    import kubernetes_validate

    if (obj.get("apiVersion"), obj.get("kind")) in CUSTOM_KINDS:
        validate_custom(obj, version)
    else:
        kubernetes_validate.validate(obj, version, strict=True)


def validate_custom(obj: dict, version: str) -> None:
    """Validate a custom resource as the API server would with ``kubectl apply`` (whose field
    validation is strict): its body against the CRD's structural schema with unknown fields
    refused (the server would prune them, kubectl refuses them), the CRD's CEL rules
    (:data:`CEL_RULES`), and its ``metadata`` as the ObjectMeta of Kubernetes ``version``."""
    import jsonschema
    import kubernetes_validate

    _validator()(_custom_schema(obj["apiVersion"], obj["kind"])).validate(obj)
    # The same ObjectMeta as every kind's; validated through a ConfigMap that carries it.
    try:
        wrapper = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]}
        kubernetes_validate.validate(wrapper, version, strict=True)
    except jsonschema.ValidationError as error:
        raise jsonschema.ValidationError(f"{obj['kind']} metadata: {error.message}") from error


@functools.cache
def _custom_schema(api_version: str, kind: str) -> dict:
    """The strict schema of a custom kind: every object schema with properties and neither
    ``additionalProperties`` nor ``x-kubernetes-preserve-unknown-fields`` closed."""
    schema = yaml.safe_load(CUSTOM_KINDS[(api_version, kind)].read_text())
    for node in _subschemas(schema):
        preserve = node.get("x-kubernetes-preserve-unknown-fields", False)
        if "properties" in node and "additionalProperties" not in node and not preserve:
            node["additionalProperties"] = False
        for rule in node.get("x-kubernetes-validations", []):
            if rule["rule"] not in CEL_RULES:
                raise NotImplementedError(f"{kind}: CEL rule not in CEL_RULES: {rule['rule']}")
    return schema


def _subschemas(schema: dict) -> Iterator[dict]:
    """``schema`` and every schema inside it (a combinator this does not follow is refused)."""
    unknown = {"allOf", "oneOf", "not"} & set(schema)
    assert not unknown, f"_subschemas() does not follow {unknown}"
    yield schema
    children = list(schema.get("properties", {}).values()) + list(schema.get("anyOf", []))
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            children.append(schema[key])
    for child in children:
        yield from _subschemas(child)


@functools.cache
def _validator():
    """Draft 2020-12 (OpenAPI 3's schemas are a subset) with the CRDs' CEL rules as a keyword."""
    import jsonschema

    def cel(validator, rules, instance, schema):
        for rule in rules:
            if isinstance(instance, dict) and not CEL_RULES[rule["rule"]](instance):
                yield jsonschema.ValidationError(rule.get("message", rule["rule"]))

    return jsonschema.validators.extend(
        jsonschema.Draft202012Validator, {"x-kubernetes-validations": cel}
    )


def main() -> None:
    count = 0
    for overlay in OVERLAYS:
        for obj in render(KUBERNETES / overlay):
            for version in VERSIONS:
                validate(obj, version)
            count += 1
    for example in sorted(KUBERNETES.rglob("*.example.yaml")):
        for obj in load_yaml(example):
            for version in VERSIONS:
                validate(obj, version)
            count += 1
    print(f"{count} objects valid in Kubernetes {' and '.join(VERSIONS)}", file=sys.stderr)


if __name__ == "__main__":
    main()
