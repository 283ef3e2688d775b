"""The `huifang` command and the local development stack: tooling around the services, not their runtime."""
