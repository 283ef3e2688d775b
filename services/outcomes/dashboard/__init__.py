"""The ops dashboard: a server-rendered page behind a supervisor login."""
