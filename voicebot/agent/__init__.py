"""The agent core every channel (voice, WhatsApp, e-mail, terminal chat) talks to.

``voicebot.agent.store`` holds agents, routes and contacts; ``voicebot.agent.core`` turns an incoming message
into a streamed, persisted, cited reply.
"""
