// Package auth authenticates and authorizes REST callers: HMAC-SHA256 API
// tokens signed with server-side secrets (several active at once, for
// rotation), and client certificates verified by mutual TLS and allowed by
// name. An identity may be limited to some hypervisors and to a pattern of
// volume names.
//
// A token is "pvt1.<payload>.<signature>": payload is the unpadded
// base64url encoding of a JSON object of claims (kid, sub, exp, and
// optionally hyp and vol), signature the unpadded base64url encoding of
// HMAC-SHA256(secret of kid, "pvt1." + payload).
package auth
