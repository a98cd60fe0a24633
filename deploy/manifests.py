"""The Kubernetes manifests of deploy/kubernetes/, rendered and checked offline.

    python -m deploy.manifests        (validates base/ and gpu/, as `make test` does)

:func:`render` builds a kustomization the way ``kubectl kustomize`` does for the features these
manifests use (resources, images, JSON 6902 patches), so that the checks need no cluster and no
kubectl; ``tests/test_kubernetes.py`` compares it with ``kubectl kustomize`` where kubectl is
installed. :func:`validate` checks each object against the Kubernetes OpenAPI schemas that the
``kubernetes-validate`` package ships, strictly (unknown fields are errors).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import yaml

KUBERNETES = Path(__file__).resolve().parent / "kubernetes"
OVERLAYS = ("base", "gpu")
# The oldest Kubernetes these manifests are checked against (autoscaling/v2, seccompProfile
# and sizeLimit are older), and the newest kubernetes-validate knows.
VERSIONS = ("1.29", "1.37")


def load_yaml(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]


def apply_json6902(obj: dict, operations: list[dict]) -> dict:
    """``obj`` with the add / replace / remove operations applied (RFC 6902)."""
    obj = copy.deepcopy(obj)
    for op in operations:
        *parents, last = _pointer(op["path"])
        node = obj
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
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


def pod_spec(obj: dict) -> dict | None:
    """The pod template's spec of a workload, or None for other kinds."""
    return obj.get("spec", {}).get("template", {}).get("spec")


def validate(obj: dict, version: str) -> None:
    """Raise ``kubernetes_validate.ValidationError`` (or ``SchemaNotFoundError`` for a kind it
    has no schema of) unless ``obj`` is valid in Kubernetes ``version``, strictly."""
    import kubernetes_validate

    kubernetes_validate.validate(obj, version, strict=True)


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
