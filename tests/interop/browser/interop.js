// Starts Converse.js for the browser interop tests and exposes what the test driver
// (tests/interop/browser.py) reads and calls as window.interop.
//
// The page's URL fragment is a URL-encoded JSON object of Converse settings, merged over
// the defaults below: the tests pass websocket_url or bosh_service_url, jid and password.
import converse from './node_modules/converse.js/dist/converse.min.js';

(function () {
    const state = {
        // Set once the plugin below has been initialised by Converse.
        ready: false,
        // Errors thrown by converse.initialize or seen by the page, as text.
        errors: [],
        // Every connection status Converse went through (Strophe.Status values), in order.
        statuses: [],
        api: null,
    };
    window.interop = state;

    window.addEventListener('error', (ev) => state.errors.push(String(ev.message || ev)));
    window.addEventListener('unhandledrejection', (ev) => state.errors.push('unhandled rejection: ' + String(ev.reason)));

    let options = {};
    try {
        const fragment = decodeURIComponent(location.hash.slice(1));
        options = fragment ? JSON.parse(fragment) : {};
    } catch (e) {
        state.errors.push('the URL fragment is not a JSON object of settings: ' + e);
        return;
    }

    const defaults = {
        assets_path: '/node_modules/converse.js/dist',
        auto_login: true,
        discover_connection_methods: false,
        view_mode: 'fullscreen',
        i18n: 'en',
        loglevel: 'info',
        play_sounds: false,
        show_desktop_notifications: false,
        allow_non_roster_messaging: true,
    };

    /** A chat message model as plain data. */
    function messageData(m) {
        return {
            msgid: m.get('msgid'),
            sender: m.get('sender'), // 'me' or 'them'
            from: m.get('from'),
            type: m.get('type'),
            body: m.get('body') ?? m.get('message') ?? null,
            oob_url: m.get('oob_url') ?? null,
            progress: m.get('progress') ?? null,
            is_error: m.get('type') === 'error',
            error_text: m.get('error_text') ?? null,
        };
    }

    converse.plugins.add('interop', {
        initialize() {
            const _converse = this._converse;
            const api = _converse.api;
            api.listen.on('connfeedback', (feedback) => {
                const status = feedback.get('connection_status');
                if (state.statuses[state.statuses.length - 1] !== status) state.statuses.push(status);
            });
            Object.assign(state, {
                api,
                _converse,

                /** Connection status and the JID (the full JID once a resource is bound). */
                status() {
                    const feedback = _converse.state?.connfeedback ?? _converse.connfeedback;
                    return {
                        connected: Boolean(api.connection.connected()),
                        authenticated: Boolean(api.connection.get()?.authenticated),
                        jid: api.user.jid() ?? null,
                        connection_status: feedback?.get('connection_status') ?? null,
                        feedback: feedback?.get('message') ?? null,
                        statuses: state.statuses.slice(),
                        errors: state.errors.slice(),
                    };
                },

                /** Resolves once the roster and the open chats are loaded: ready for chats. */
                async sessionReady() {
                    await Promise.all(['rosterContactsFetched', 'chatBoxesFetched'].map((p) => api.waitUntil(p)));
                    return true;
                },

                /** Whether Converse found an HTTP upload service (XEP-0363) on the account's domain. */
                async uploadSupported() {
                    const domain = _converse.session.get('domain');
                    return Boolean(await api.disco.supports('urn:xmpp:http:upload:0', domain));
                },

                /** Opens (and shows) the one-to-one chat with jid; resolves to its model. */
                async openChat(jid) {
                    return api.chats.open(jid, {}, true);
                },

                /** Sends a message through the chat's model, as the message form does. */
                async send(jid, body) {
                    const chat = await state.openChat(jid);
                    const message = await chat.sendMessage({ body });
                    if (!message) throw new Error('Converse did not send the message to ' + jid);
                    return message.get('msgid');
                },

                /** Uploads a file (XEP-0363) into the chat with jid; bytes are base64. */
                async upload(jid, name, type, base64) {
                    const chat = await state.openChat(jid);
                    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
                    await chat.sendFiles([new File([bytes], name, { type })]);
                },

                /** The messages of the one-to-one chat with jid, oldest first. */
                async messages(jid) {
                    const chat = await api.chats.get(jid);
                    return chat ? chat.messages.models.map(messageData) : [];
                },

                /** The texts of the messages shown in the chat with jid. */
                shownTexts(jid) {
                    const view = document.querySelector(`converse-chat[jid="${CSS.escape(jid)}"]`);
                    if (!view) return [];
                    return Array.from(view.querySelectorAll('converse-chat-message .chat-msg__text')).map(
                        (el) => el.textContent.trim(),
                    );
                },
            });
            state.ready = true;
        },
    });

    const settings = Object.assign({}, defaults, options, {
        whitelisted_plugins: ['interop'].concat(options.whitelisted_plugins || []),
        // OMEMO looks for its WebAssembly next to the page, not in assets_path.
        blacklisted_plugins: ['converse-omemo', 'converse-omemo-views'].concat(options.blacklisted_plugins || []),
    });
    converse.initialize(settings).catch((e) => state.errors.push('converse.initialize: ' + e));
})();
