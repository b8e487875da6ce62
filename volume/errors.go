package volume

import "errors"

// The errors backends return match these (errors.Is), whatever the backend.
var (
	// ErrInUse: something, such as a running VM, holds the volume, so it is
	// neither overwritten nor removed.
	ErrInUse = errors.New("the volume is in use")
	// ErrNotFound: the volume does not exist.
	ErrNotFound = errors.New("the volume does not exist")
	// ErrSizeMismatch: an existing volume's size is outside what a reused
	// volume may differ from the request by (CheckReuse); it is left as it is.
	ErrSizeMismatch = errors.New("the existing volume's size does not match the request")
	// ErrCloneUnsupported: a Cloner was asked to clone where its storage
	// cannot (see CloneSupport).
	ErrCloneUnsupported = errors.New("copy-on-write clones are not possible here")
)

// InUseError is a refusal to act on a volume something holds. Reason says
// what holds it; Action is what was refused ("overwrite" or "remove").
type InUseError struct {
	Volume string
	Reason string
	Action string
}

func (e *InUseError) Error() string { return e.Reason + "; refusing to " + e.Action + " it" }

// Is makes an InUseError match ErrInUse.
func (e *InUseError) Is(target error) bool { return target == ErrInUse }

// sizeMismatch is CheckReuse's refusal.
type sizeMismatch struct{ msg string }

func (e *sizeMismatch) Error() string        { return e.msg }
func (e *sizeMismatch) Is(target error) bool { return target == ErrSizeMismatch }
