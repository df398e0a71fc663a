#!/usr/bin/env python3
"""Vendors the Kubernetes .proto definitions Weft's protobuf codec reads, and
derives from the Go types beside them what the .proto files cannot say.

    scripts/k8s-proto.py API_GIT_DIR APIMACHINERY_GIT_DIR TAG

API_GIT_DIR and APIMACHINERY_GIT_DIR are git directories of
github.com/kubernetes/api and github.com/kubernetes/apimachinery (the
`fetch` tool's mirrors will do); TAG is their release tag (v0.33.9 is
Kubernetes 1.33.9, the API version Weft serves). It writes, under
controller/proto/:

- k8s.io/.../generated.proto: the upstream files, their comments dropped
  (the license header is kept);
- go-fields.txt: one line per field whose Go type is a pointer (`ptr`),
  that Go's JSON inlines into its parent (`inline`), or whose JSON name is
  not its protobuf name (`json FIELD NAME`), as
  `ptr k8s.io.api.core.v1.PodSpec.terminationGracePeriodSeconds`.

Why the second file: Go writes every non-pointer field to protobuf, zero or
not, so a decoded zero means "unset" unless the Go field is a pointer
(replicas: 0, allowPrivilegeEscalation: false); only the Go types say which.
"""
import os
import re
import subprocess
import sys

API_DIRS = [
    "core/v1", "apps/v1", "batch/v1", "networking/v1", "policy/v1",
    "discovery/v1", "coordination/v1", "events/v1", "storage/v1",
    "autoscaling/v1", "rbac/v1", "authentication/v1", "authorization/v1",
]
MACHINERY_DIRS = [
    "pkg/apis/meta/v1", "pkg/runtime", "pkg/runtime/schema",
    "pkg/util/intstr", "pkg/api/resource",
]

HEADER = """/*
Copyright The Kubernetes Authors.

Licensed under the Apache License, Version 2.0 (the "License");
you may not use this file except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software
distributed under the License is distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.
*/
"""


def show(git_dir, tag, path):
    return subprocess.run(
        ["git", "--git-dir", git_dir, "show", f"{tag}:{path}"],
        check=True, capture_output=True, text=True,
    ).stdout


def ls(git_dir, tag, d):
    out = subprocess.run(
        ["git", "--git-dir", git_dir, "ls-tree", "--name-only", f"{tag}:{d}"],
        check=True, capture_output=True, text=True,
    ).stdout
    return [n for n in out.split() if n.endswith(".go") and not n.endswith("_test.go")]


def strip_proto(text):
    body = re.sub(r"/\*.*?\*/", "", text, count=1, flags=re.S)
    lines = []
    for line in body.splitlines():
        if line.strip().startswith("//"):
            continue
        if not line.strip() and (not lines or not lines[-1].strip()):
            continue
        lines.append(line.rstrip())
    return HEADER + "\n".join(lines).strip() + "\n"


STRUCT = re.compile(r"^type (\w+) struct \{$")
FIELD = re.compile(r'^\s+(?:(\w+)\s+)?(\S+)\s+`([^`]*)`')


def go_fields(source, package):
    """(kind, proto name) of the pointer and inline fields in a Go file."""
    out = []
    struct = None
    for line in source.splitlines():
        m = STRUCT.match(line)
        if m:
            struct = m.group(1)
            continue
        if struct and line.startswith("}"):
            struct = None
            continue
        if not struct:
            continue
        code = line.split("//")[0] if "`" not in line else line
        m = FIELD.match(code)
        if not m:
            continue
        gotype, tags = m.group(2), m.group(3)
        if m.group(1) is None:
            # An embedded field: `metav1.TypeMeta \`json:",inline"\``.
            gotype = m.group(2)
        pm = re.search(r'protobuf:"([^"]*)"', tags)
        if not pm:
            continue
        name = next((p[5:] for p in pm.group(1).split(",") if p.startswith("name=")), None)
        if not name:
            # go-to-protobuf names an unnamed (embedded) field after its type.
            base = gotype.lstrip("*").split(".")[-1]
            name = base[:1].lower() + base[1:]
        jm = re.search(r'json:"([^"]*)"', tags)
        full = f"{package}.{struct}.{name}"
        json_name = jm.group(1).split(",")[0] if jm else ""
        if jm and ",inline" in jm.group(1) and json_name == "":
            out.append(("inline", full))
            continue
        if gotype.startswith("*"):
            out.append(("ptr", full))
        if json_name not in ("", "-", name):
            out.append(("json", f"{full} {json_name}"))
    return out


def main():
    api, machinery, tag = sys.argv[1:4]
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "controller", "proto")
    fields = []
    for git_dir, prefix, dirs in [(api, "k8s.io/api", API_DIRS), (machinery, "k8s.io/apimachinery", MACHINERY_DIRS)]:
        for d in dirs:
            proto = show(git_dir, tag, f"{d}/generated.proto")
            package = re.search(r"^package ([\w.]+);", proto, re.M).group(1)
            dest = os.path.join(root, prefix, d, "generated.proto")
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, "w") as f:
                f.write(strip_proto(proto))
            for name in ls(git_dir, tag, d):
                fields += go_fields(show(git_dir, tag, f"{d}/{name}"), package)
    with open(os.path.join(root, "go-fields.txt"), "w") as f:
        f.write(f"# Generated by scripts/k8s-proto.py from kubernetes/api and apimachinery {tag}.\n")
        for kind, full in sorted(set(fields), key=lambda x: (x[1], x[0])):
            f.write(f"{kind} {full}\n")
    print(f"{len(fields)} lines ({sum(1 for k, _ in fields if k == 'ptr')} pointers)")


main()
