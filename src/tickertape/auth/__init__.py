"""Who may log in, and what they may do: users, roles, passwords and the users file.

- :mod:`tickertape.auth.passwords`: what SoupBinTCP's Username and Password fields may
  hold, and the scrypt hashes of passwords (making and checking them).
- :mod:`tickertape.auth.user`: one user (:class:`~tickertape.auth.user.User`), the roles
  and :class:`~tickertape.auth.user.Permissions`, the session patterns a subscriber reads.
- :mod:`tickertape.auth.usersfile`: the users file (TOML): reading and checking it, with
  errors that name the file, and writing it atomically.
- :mod:`tickertape.auth.users`: :class:`~tickertape.auth.users.Users`, the users by name,
  what a server authenticates a login against.

Not here: how a server decides a login (``tickertape.server.access``) and the
``tickertape users`` verb.
"""
