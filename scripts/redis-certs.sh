#!/usr/bin/env bash
# redis-certs.sh — sourced by redis-group.sh and redis-cluster.sh (--tls):
# makes the certificates of a local test group or cluster with openssl.
#
#   make_redis_certs DIR [IP...]
#
# writes into DIR: ca.crt/ca.key (a CA), server.crt/server.key (one
# certificate for every node: DNS localhost, IP 127.0.0.1 and the IPs given;
# no extended key usage, so replicas, Sentinels and cluster nodes present it
# as their client certificate too) and client.crt/client.key (the app's,
# clientAuth). Keys are 0600. Fails (via die, which the caller defines) when
# openssl does.

make_redis_certs() {
  local d=$1 san="DNS:localhost,IP:127.0.0.1" h
  shift
  mkdir -p "$d"
  for h in "$@"; do
    [[ ,$san, == *",IP:$h,"* ]] || san+=",IP:$h"
  done
  local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1)
  {
    openssl req -x509 -new -nodes "${ec[@]}" \
      -keyout "$d/ca.key" -out "$d/ca.crt" -days 30 -subj "/CN=flashsale test CA" &&
      openssl req -new -nodes "${ec[@]}" \
        -keyout "$d/server.key" -out "$d/server.csr" -subj "/CN=flashsale redis node" &&
      openssl x509 -req -in "$d/server.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
        -out "$d/server.crt" -days 30 -extfile <(printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\n' "$san") &&
      openssl req -new -nodes "${ec[@]}" \
        -keyout "$d/client.key" -out "$d/client.csr" -subj "/CN=flashsale client" &&
      openssl x509 -req -in "$d/client.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
        -out "$d/client.crt" -days 30 -extfile <(printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n')
  } >"$d/openssl.log" 2>&1 || { cat "$d/openssl.log" >&2; die "openssl failed to make the certificates"; }
  rm -f "$d"/*.csr "$d"/*.srl
  chmod 600 "$d"/*.key
}

# The TLS lines of a node's config: TLS only on PORT (no plain port),
# clients must present a certificate of the CA, replication over TLS.
redis_tls_conf() {
  local d=$1 port=$2
  echo "port 0"
  echo "tls-port $port"
  echo "tls-cert-file \"$d/server.crt\""
  echo "tls-key-file \"$d/server.key\""
  echo "tls-ca-cert-file \"$d/ca.crt\""
  echo "tls-auth-clients yes"
  echo "tls-replication yes"
}
