# shellcheck shell=bash
# Sourced by scripts/check-deploy and scripts/check-kube-play: rootful podman on this kind of
# machine, local stand-ins for the base images packaging/Dockerfile names, and the image build.
#
# Host quirks and their fixes (../shared/docs/toolchain.md, "Real systemd and real containers"):
# runc (crun 1.8 refuses hybrid cgroups), explicit ulimits (root lacks CAP_SYS_RESOURCE),
# cgroupfs and file events (PID 1 is not systemd). Storage lives under target/deploy/ so the
# stand-in base images stay cached between runs.
#
# Needs from the caller: $repo, $work, $scratch, $target_dir, and the functions step/pass/fail.
# shellcheck disable=SC2154  # those variables

readonly RELEASE_BIN_TRIPLE=x86_64-unknown-linux-gnu
# Bumped whenever make_base_images changes what it makes: cached stand-ins of another recipe are
# made again.
readonly STAND_IN_RECIPE=3
current() { # current TAG: the stand-in TAG exists and was made by this recipe
  [ "$(podman image inspect -f '{{index .Labels "dda.stand-in"}}' "$1" 2>/dev/null)" = "$STAND_IN_RECIPE" ]
}

podman_setup() {
  local nofile
  nofile=$(ulimit -Hn)
  export CONTAINERS_CONF="$work/containers.conf" CONTAINERS_STORAGE_CONF="$work/storage.conf"
  cat >"$CONTAINERS_CONF" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
  cat >"$CONTAINERS_STORAGE_CONF" <<EOF
[storage]
driver = "overlay"
graphroot = "$work/containers/storage"
runroot = "$work/containers/run"
EOF
  podman info >/dev/null 2>&1 || { podman info >&2 || true; fail "podman does not work with $CONTAINERS_CONF"; }
  pass "podman $(podman version --format '{{.Client.Version}}'), runtime runc, storage $work/containers"
}

# Stand-ins for the Dockerfile's FROM images and the manifests' helper image, made from Debian
# 12's packages (no registry can be reached here):
# - gcr.io/distroless/cc-debian12:nonroot: distroless's cc package set (glibc, libgcc, libssl,
#   libstdc++, CA bundle, tzdata), user 65532 "nonroot", no shell.
# - rust:<RUST_VERSION>-slim-bookworm: a shim whose `cargo` puts the release binary that
#   scripts/package built where `cargo build --release` would. Chosen over an image with the host
#   toolchain because a real build inside would compile the whole tree again (~150 s on 2 cores,
#   with the crates fetched offline), which the time budget cannot pay; the Dockerfile's build
#   stage still runs as written (COPY, the cache mounts, the RUN, COPY --from), and the image gets
#   the very binary the packages ship (glibc 2.17 symbols, so it runs on distroless's glibc 2.36).
# - busybox (the ECS init container and the EKS init container): busybox-static.
# Sets distroless_tag, rust_tag, busybox_tag.
make_base_images() {
  local start d b rust_version
  rust_version=$(sed -n 's/^ARG RUST_VERSION=//p' "$repo/packaging/Dockerfile")
  distroless_tag=gcr.io/distroless/cc-debian12:nonroot
  rust_tag="docker.io/library/rust:${rust_version}-slim-bookworm"
  busybox_tag=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(next(c["image"] for c in d["containerDefinitions"] if c["name"]=="socket-dir-init"))' "$repo/packaging/ecs/task-definition.json")
  if ! current "$distroless_tag"; then
    start=$(date +%s)
    mmdebstrap --quiet --variant=extract \
      --include=base-files,netbase,tzdata,ca-certificates,libc6,libgcc-s1,libssl3,libgomp1,libstdc++6 \
      bookworm "$scratch/distroless" || fail "mmdebstrap could not extract the distroless package set"
    d="$scratch/distroless"
    rm -rf "$d"/var/lib/apt "$d"/var/cache/apt "$d"/usr/share/doc "$d"/usr/share/man
    # The CA bundle distroless ships (ca-certificates' postinst makes it; extract runs no scripts).
    mkdir -p "$d/etc/ssl/certs"
    cat "$d"/usr/share/ca-certificates/mozilla/*.crt >"$d/etc/ssl/certs/ca-certificates.crt"
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$d/etc/passwd"
    printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$d/etc/group"
    install -d -m 0700 -o 65532 -g 65532 "$d/home/nonroot"
    install -d -m 1777 "$d/tmp"
    for sh in bin/sh bin/bash bin/dash usr/bin/sh usr/bin/bash usr/bin/dash; do
      [ ! -e "$d/$sh" ] || fail "the distroless stand-in has a shell ($sh)"
    done
    tar -C "$d" -cf "$scratch/distroless.tar" .
    podman import --quiet --change 'USER 65532:65532' --change 'WORKDIR /home/nonroot' \
      --change "LABEL dda.stand-in=$STAND_IN_RECIPE" \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      "$scratch/distroless.tar" "$distroless_tag" >/dev/null
    rm -rf "$d" "$scratch/distroless.tar"
    pass "$distroless_tag made in $(( $(date +%s) - start ))s"
  else pass "$distroless_tag (cached)"; fi
  if ! current "$busybox_tag"; then
    mmdebstrap --quiet --variant=extract --include=busybox-static bookworm "$scratch/busybox" \
      || fail "mmdebstrap could not extract busybox-static"
    b="$scratch/busybox"
    mkdir -p "$b/usr/local/bin" "$b/tmp"
    ln -sf busybox "$b/bin/sh"
    for a in chown chmod chgrp mkdir cat ls cp id test stat sleep dirname; do ln -sf /bin/busybox "$b/usr/local/bin/$a"; done
    tar -C "$b" -cf "$scratch/busybox.tar" bin usr tmp
    podman import --quiet --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' --change 'CMD ["sh"]' \
      --change "LABEL dda.stand-in=$STAND_IN_RECIPE" \
      "$scratch/busybox.tar" "$busybox_tag" >/dev/null
    rm -rf "$b" "$scratch/busybox.tar"
    pass "$busybox_tag made"
  else pass "$busybox_tag (cached)"; fi
  # The shim holds this run's binary, so it is remade every run (a second: one layer on busybox).
  mkdir -p "$scratch/shim"
  cp "$target_dir/$RELEASE_BIN_TRIPLE/release/datadog-delegated-auth" "$scratch/shim/datadog-delegated-auth" \
    || fail "no release binary in $target_dir/$RELEASE_BIN_TRIPLE/release (run scripts/package)"
  cat >"$scratch/shim/cargo" <<'EOF'
#!/bin/sh
# Stand-in for `cargo build --release ... --bin datadog-delegated-auth` (scripts/lib-images.sh).
set -e
mkdir -p target/release
cp /opt/prebuilt/datadog-delegated-auth target/release/datadog-delegated-auth
EOF
  # The rust image has coreutils' install; busybox-static has no such applet. `install -D -m MODE
  # SRC DST` is the only form the Dockerfile uses.
  cat >"$scratch/shim/install" <<'EOF'
#!/bin/sh
set -e
[ "$1" = -D ] && [ "$2" = -m ] && [ $# = 5 ] || { echo "install shim: only 'install -D -m MODE SRC DST'" >&2; exit 2; }
mkdir -p "$(dirname "$5")"
cp "$4" "$5"
chmod "$3" "$5"
EOF
  cat >"$scratch/shim/Containerfile" <<EOF
FROM $busybox_tag
COPY datadog-delegated-auth /opt/prebuilt/datadog-delegated-auth
COPY cargo install /usr/local/bin/
EOF
  chmod 0755 "$scratch/shim/cargo" "$scratch/shim/install"
  podman build --quiet --pull=never -t "$rust_tag" "$scratch/shim" >/dev/null \
    || fail "could not build the rust build-stage shim"
  pass "$rust_tag (shim holding this run's release binary)"
}

# build_image TAG: packaging/Dockerfile, unmodified, in the Docker format (the OCI format drops
# HEALTHCHECK). Sets image_size (bytes).
build_image() {
  local start
  start=$(date +%s)
  (cd "$repo" && podman build --quiet --pull=never --format docker \
    --ignorefile packaging/Dockerfile.dockerignore -f packaging/Dockerfile -t "$1" .) \
    >"$scratch/build.log" 2>&1 || { cat "$scratch/build.log" >&2; fail "podman build of packaging/Dockerfile failed"; }
  image_size=$(podman image inspect -f '{{.Size}}' "$1")
  pass "built in $(( $(date +%s) - start ))s: $1, $((image_size / 1000000)) MB ($image_size bytes)"
}
