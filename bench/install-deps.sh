#!/bin/sh
# Install what bench/run.py needs on Debian 12 (run as root; safe to run again).
#   stunnel4         the stunnel peer (two-hop, mutual TLS)
#   openssh-server   sshd for the OpenSSH reverse-tunnel peer (run by the harness on a high
#                    port with its own config; the system service is not needed)
#   openssh-client   ssh -N -R and ssh-keygen
#   gcc libc6-dev    to compile bench/loadgen.c and bench/target.c
#   libssl-dev       OpenSSL for the load generator's TLS (the portal path, ours-portal)
#   openssl          the throw-away CA and certificates for stunnel
#   procps           ps/top for eyeballing runs (the harness reads /proc itself)
set -eu

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps.sh: run as root (apt-get needs it)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends \
    stunnel4 openssh-server openssh-client gcc libc6-dev libssl-dev openssl procps

# The Debian package enables and starts the system sshd; the benchmark runs its own on a high
# port and does not need it. Leave the system's choice alone, but make sure the privilege
# separation directory sshd insists on exists even where no service was started.
mkdir -p /run/sshd
chmod 0755 /run/sshd
