// Package file keeps volumes as raw files in one directory; a volume's file
// name is its name, and names that would leave the directory are refused.
// Where the directory's file system has reflinks (XFS with reflink=1,
// btrfs) it is also a volume.Cloner: a read-only golden raw file per image
// in <dir>/.golden, and every volume a FICLONE of it; elsewhere the worker
// converts into each volume.
package file
