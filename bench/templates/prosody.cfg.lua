-- Prosody 0.12 configuration for benchmarks. Generated into a private directory by
-- bench/run.sh, which replaces the @...@ placeholders. Changes from Debian's
-- /etc/prosody/prosody.cfg.lua are listed in BENCHMARKS.md ("Server configurations").

admins = { }
pidfile = "@DIR@/prosody.pid"
data_path = "@DIR@/data"
plugin_paths = { }

-- The modules matching Rookery's (disco, ping, version, time, roster, presence, offline,
-- vcard, private, last, blocking, register, pep; muc is a component below). Debian's
-- default also loads mod_limits (c2s rate 10 kB/s), carbons, smacks, bookmarks, vcard4,
-- csi_simple, invites, admin_adhoc/admin_shell, uptime and posix: not loaded here.
modules_enabled = {
	"roster";
	"saslauth";
	"tls";
	"disco";
	"ping";
	"time";
	"version";
	"vcard_legacy";
	"private";
	"lastactivity";
	"blocklist";
	"register";
	-- Personal eventing, as the pep scenario needs it; it learns a contact's +notify
	-- features from the caps in its presence by itself. vcard_legacy loads it anyway (it
	-- keeps avatars in PEP): listed so that it is chosen, not a side effect.
	"pep";
	-- XMPP over BOSH and WebSocket, for the web-transport scenarios (on the plain HTTP
	-- port below).
	"bosh";
	"websocket";
}
-- Autoloaded modules kept: presence, message, iq, offline, c2s. No federation.
modules_disabled = { "s2s"; "s2s_auth_certs"; "dialback" }

-- Listen on loopback only, on this instance's own ports.
interfaces = { "127.0.0.1" }
local_interfaces = { "127.0.0.1" }
c2s_ports = { @PORT_C2S@ }
c2s_direct_tls_ports = { @PORT_C2S_TLS@ }
s2s_ports = { }
component_ports = { }
-- HTTP in the clear for BOSH (/http-bind) and WebSocket (/xmpp-websocket), on loopback.
http_ports = { @PORT_HTTP@ }
http_interfaces = { "127.0.0.1" }
https_ports = { }
https_interfaces = { }
-- Requests whose Host is not a VirtualHost (127.0.0.1:port) are served by this one.
http_default_host = "@DOMAIN@"
-- As if behind a reverse proxy that terminated TLS: BOSH and WebSocket sessions count as
-- encrypted, so c2s_require_encryption below lets them authenticate (the TCP scenarios
-- measure TLS; these measure the transports). Rookery: [http] trusted_proxies.
consider_bosh_secure = true
consider_websocket_secure = true

-- Default 128 pending connections; raised to match the others (1024).
network_settings = {
	tcp_backlog = 1024;
}

-- Authentication in the clear allowed for the login-tcp scenario (as in the other servers'
-- files); the other TCP scenarios still negotiate STARTTLS first.
c2s_require_encryption = false
s2s_require_encryption = true

authentication = "internal_hashed"
-- Default 10,000 PBKDF2 iterations for new accounts; 4096 like ejabberd and Rookery.
default_iteration_count = 4096
storage = "internal"

-- In-band registration, used by the bench script to create the accounts. Loopback is on
-- mod_register_limits' default allowlist, so registrations are not throttled.
allow_registration = true

log = {
	{ levels = { min = "warn" }, to = "file", filename = "@DIR@/prosody.log" };
}

ssl = {
	certificate = "@CERT@";
	key = "@KEY@";
}

VirtualHost "@DOMAIN@"
	ssl = {
		certificate = "@CERT@";
		key = "@KEY@";
	}

-- Group chat, as the muc scenario needs it: 20 messages of history, anyone may create rooms.
Component "conference.@DOMAIN@" "muc"
	restrict_room_creation = false
	max_history_messages = 20
	muc_room_default_history_length = 20
