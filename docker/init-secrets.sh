#!/usr/bin/env sh
# Creates random passwords for NATS (worker and publisher) and PostgreSQL in docker/secrets/,
# mode 0600, once; existing files are kept. The GitLab token is yours to put in
# docker/secrets/gitlab_token.
set -eu
dir="$(dirname "$0")/secrets"
umask 077
mkdir -p "$dir"
for name in nats_worker_password nats_publisher_password postgres_password; do
  if [ ! -s "$dir/$name" ]; then
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/$name"
    echo "created $dir/$name"
  fi
done
[ -s "$dir/gitlab_token" ] || echo "now put the service account's token in $dir/gitlab_token"
