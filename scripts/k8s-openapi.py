#!/usr/bin/env python3
"""Vendors the Kubernetes OpenAPI definitions Weft serves and reads.

    scripts/k8s-openapi.py PYTHON_CLIENT_GIT_DIR TAG

PYTHON_CLIENT_GIT_DIR is a git directory of
github.com/kubernetes-client/python (the `fetch` tool's mirror will do),
whose `kubernetes/swagger.json.unprocessed` at release TAG is the OpenAPI v2
document of kube-apiserver for that release (v33.1.0 is Kubernetes 1.33,
the API version Weft serves). It writes controller/openapi/k8s.json: the
definitions of the API groups below and every definition they refer to,
unchanged (descriptions, `x-kubernetes-*` extensions and all).

Weft reads them for three things (controller/src/openapi): the OpenAPI v2
and v3 documents it serves (`kubectl explain`, client-side validation), and
the list and map types server-side apply merges and tracks fields by
(`x-kubernetes-list-type`, `-list-map-keys`, `-map-type`).
"""
import json
import os
import subprocess
import sys

# The groups and versions Weft serves (as scripts/k8s-proto.py), plus
# meta/v1 and the other apimachinery types they refer to.
API_PREFIXES = [
    "io.k8s.api." + d.replace("/", ".") + "."
    for d in [
        "core/v1", "apps/v1", "batch/v1", "networking/v1", "policy/v1",
        "discovery/v1", "coordination/v1", "events/v1", "storage/v1",
        "autoscaling/v1", "autoscaling/v2", "rbac/v1", "authentication/v1",
        "authorization/v1",
    ]
]

# What every group's document refers to beside its kinds: answers of
# deletes, watches and discovery.
META = "io.k8s.apimachinery.pkg.apis.meta.v1."
META_EXTRA = ["Status", "WatchEvent", "APIResourceList", "APIGroup", "APIGroupList", "APIVersions"]


def refs(node, out):
    if isinstance(node, dict):
        r = node.get("$ref")
        if isinstance(r, str) and r.startswith("#/definitions/"):
            out.add(r[len("#/definitions/"):])
        for v in node.values():
            refs(v, out)
    elif isinstance(node, list):
        for v in node:
            refs(v, out)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    git_dir, tag = sys.argv[1], sys.argv[2]
    text = subprocess.run(
        ["git", "--git-dir", git_dir, "show", f"{tag}:kubernetes/swagger.json.unprocessed"],
        check=True, capture_output=True,
    ).stdout
    spec = json.loads(text)
    defs = spec["definitions"]
    keep = {n for n in defs if any(n.startswith(p) for p in API_PREFIXES)}
    keep |= {META + n for n in META_EXTRA}
    todo = list(keep)
    while todo:
        found = set()
        refs(defs[todo.pop()], found)
        for n in found - keep:
            keep.add(n)
            todo.append(n)
    out = {
        "source": f"github.com/kubernetes-client/python {tag} kubernetes/swagger.json.unprocessed "
                  "(kube-apiserver's OpenAPI v2 document, Apache-2.0, Copyright The Kubernetes Authors)",
        "definitions": {n: defs[n] for n in sorted(keep)},
    }
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    os.makedirs(os.path.join(root, "controller", "openapi"), exist_ok=True)
    path = os.path.join(root, "controller", "openapi", "k8s.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=None, separators=(",", ":"), sort_keys=True)
        f.write("\n")
    print(f"{path}: {len(keep)} definitions")


if __name__ == "__main__":
    main()
