"""Pages a GitLab with python-gitlab the straightforward way and prints record counts as JSON.

Used by the simulator's fidelity test: python-gitlab, a client nobody on this project wrote,
must read every user, group, project and membership with get_all=True.
"""
import json
import os

import gitlab

gl = gitlab.Gitlab(os.environ["GITLAB_URL"], private_token=os.environ["GITLAB_TOKEN"])
users = gl.users.list(get_all=True)
groups = gl.groups.list(get_all=True)
projects = gl.projects.list(get_all=True)
group_members = {}
for g in groups:
    members = g.members.list(get_all=True)
    if members:
        group_members[str(g.id)] = len(members)
project_members = {}
for p in projects:
    members = p.members.list(get_all=True)
    if members:
        project_members[str(p.id)] = len(members)
print(json.dumps({
    "users": len(users),
    "groups": len(groups),
    "projects": len(projects),
    "group_members": group_members,
    "project_members": project_members,
}))
