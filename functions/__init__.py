"""Vercel function code: parse the request, authenticate, call examq, map errors to HTTP."""
