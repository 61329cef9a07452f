"""The order ledger's role and database, as the ledger URL names them.

Run by the postgresql role as the cluster's owner (the superuser over the
local socket, peer authentication):

    python3 -c "$(cat ledger_role.py)" PSQL SOCKET_DIR PORT ROLE DATABASE apply|check

with the role's password on stdin (never in argv, never printed). It makes
ROLE a LOGIN role with no other attribute and this password (SCRAM-SHA-256),
and DATABASE a database owned by ROLE, changing only what differs: the
stored SCRAM verifier is checked against the password (PBKDF2, as the
server does), so an unchanged password is left alone and a second run
changes nothing. `check` says what `apply` would do and does nothing.
Prints one JSON object: {"changed": bool, "actions": [...]}; exit 1, with
psql's message (the password masked), when a statement fails.
"""

import base64
import hashlib
import hmac
import json
import subprocess
import sys

psql, socket_dir, port, role, database, mode = sys.argv[1:7]
password = sys.stdin.read().rstrip("\n")
# ROLE and DATABASE are [a-z0-9_] and the password [A-Za-z0-9._-] (the
# role's assert): nothing to quote inside psql's \set.
for value in (role, database, password):
    if not value or "'" in value or "\\" in value or "\n" in value:
        sys.exit("ledger_role.py: a name or the password has a character it cannot take")


def psql_run(script):
    head = f"\\set role '{role}'\n\\set db '{database}'\n\\set pw '{password}'\n"
    out = subprocess.run(
        [psql, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", socket_dir, "-p", port, "-d", "postgres"],
        input=head + script,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        sys.stderr.write(out.stderr.replace(password, "********"))
        sys.exit(1)
    return out.stdout


def scram_matches(verifier, secret):
    """Whether a stored SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey> is this password's."""
    try:
        mechanism, rest = verifier.split("$", 1)
        iter_salt, keys = rest.split("$", 1)
        iterations, salt = iter_salt.split(":", 1)
        stored_key, server_key = keys.split(":", 1)
        salted = hashlib.pbkdf2_hmac("sha256", secret.encode(), base64.b64decode(salt), int(iterations))
    except ValueError:
        return False
    if mechanism != "SCRAM-SHA-256":
        return False
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    ours_stored = base64.b64encode(hashlib.sha256(client_key).digest()).decode()
    ours_server = base64.b64encode(hmac.new(salted, b"Server Key", "sha256").digest()).decode()
    return hmac.compare_digest(ours_stored, stored_key) and hmac.compare_digest(ours_server, server_key)


state = psql_run(
    "SELECT 'role', rolcanlogin, rolsuper OR rolcreatedb OR rolcreaterole OR rolreplication OR rolbypassrls,"
    " coalesce(rolpassword, '') FROM pg_authid WHERE rolname = :'role';\n"
    "SELECT 'db', pg_get_userbyid(datdba), '', '' FROM pg_database WHERE datname = :'db';\n"
)
found = {}
for line in state.splitlines():
    kind, *fields = line.split("|", 3)
    found[kind] = fields

statements, actions = [], []
if "role" not in found:
    statements.append("CREATE ROLE :\"role\" LOGIN PASSWORD :'pw';")
    actions.append(f"create the role {role}")
else:
    can_login, privileged, verifier = found["role"]
    if can_login != "t" or privileged != "f":
        statements.append(
            "ALTER ROLE :\"role\" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;"
        )
        actions.append(f"make {role} a plain LOGIN role")
    if not scram_matches(verifier, password):
        statements.append("ALTER ROLE :\"role\" PASSWORD :'pw';")
        actions.append(f"set the password of {role}")
if "db" not in found:
    statements.append("CREATE DATABASE :\"db\" OWNER :\"role\";")
    actions.append(f"create the database {database} owned by {role}")
elif found["db"][0] != role:
    statements.append("ALTER DATABASE :\"db\" OWNER TO :\"role\";")
    actions.append(f"give the database {database} to {role} (was {found['db'][0]}'s)")

if statements and mode == "apply":
    psql_run("SET password_encryption = 'scram-sha-256';\n" + "\n".join(statements) + "\n")
print(json.dumps({"changed": bool(statements), "actions": actions}))
