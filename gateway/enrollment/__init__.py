"""Enrollment, renewal and revocation of gateway certificates (issue 19, item 4).

A gateway's private key is born on its edge PC and never travels: ``gateway enroll`` makes the
key there and sends only a certificate signing request (CSR), with a one-time token the vendor
issued for that gateway id (``gateway relay enroll-token``), to the relay's gateway listener; the
relay checks the token and the CSR and answers with a certificate signed by the gateway CA.  The
running gateway renews the same way before its certificate expires, authenticated by the
certificate it has.  ``gateway relay revoke`` cuts a gateway off.

The parts: `wire` (what both ends say, no Twisted), `keys` (keys, CSRs and signing), `tokens`
(the relay's one-time tokens, hashed at rest), `revocations` (the relay's list of revoked ids and
serials), `client` (the one-request client both ``gateway enroll`` and renewal use).
"""
