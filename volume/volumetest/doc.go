// Package volumetest is the conformance suite every volume backend runs:
// Run(t, Harness) checks, against the backend's real storage, the rules of
// the volume package's contract that hold whatever the storage is:
//
//   - Create makes a volume of exactly the size asked for, and refuses a
//     name that exists, bad sizes and invalid names, making nothing;
//   - an existing volume is reused only within ±5% of the request
//     (volume.CheckReuse on what Lookup reports), and never resized;
//   - Delete removes only the volume it is given, and nothing the project
//     did not create is overwritten or removed;
//   - a volume something holds (a running VM) is refused, with an error
//     that matches volume.ErrInUse, and keeps its bytes;
//   - a volume reads byte for byte as the image the converters populate it
//     with, followed by zeros;
//   - symlinks are refused, or resolved where the backend's own paths are
//     symlinks; what a symlink points to is never written.
//
// Adding a backend is a package plus a passing Run. The Harness gives the
// suite a fresh backend and the few hooks that reach behind its back: to
// hold a volume, to put there what the project did not create, to read a
// volume's bytes. The package also has helpers the backends' clone tests
// share (WatchVolume, Scribble, Inode).
package volumetest
