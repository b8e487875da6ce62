// Package testenv starts the real services tests run against: a MinIO server
// process, and finds the tools they need (qemu-img). When a prerequisite is
// missing, tests fail under CI=true with a message that says what to install,
// and skip otherwise.
package testenv
