"""The straightforward way to read every membership of a group tree with python-gitlab:
the group, its descendants and its projects, then each one's members, one request after another.
Prints JSON: wall time, memberships read."""
import json, os, time

import gitlab

start = time.monotonic()
gl = gitlab.Gitlab(os.environ["GITLAB_URL"], private_token=os.environ["GITLAB_TOKEN"], per_page=100)
top = gl.groups.get(os.environ["GITLAB_SCOPE"])
groups = [top] + top.descendant_groups.list(get_all=True)
projects = top.projects.list(include_subgroups=True, get_all=True)
n = 0
for g in groups:
    n += len(gl.groups.get(g.id, lazy=True).members.list(get_all=True))
for p in projects:
    n += len(gl.projects.get(p.id, lazy=True).members.list(get_all=True))
print(json.dumps({"wall_s": time.monotonic() - start, "memberships": n, "groups": len(groups), "projects": len(projects)}))
