package kvstate

import (
	"errors"
	"fmt"
)

// The not-found errors. Each store returns its own, which names what was
// missing and matches ErrNotFound (errors.Is), so a caller can branch on
// either.
var (
	// ErrNotFound: nothing under that key, in any store.
	ErrNotFound = errors.New("not found")
	// ErrJobNotFound: no job record under that key.
	ErrJobNotFound = fmt.Errorf("job record %w", ErrNotFound)
	// ErrHostNotFound: no host registry entry under that name.
	ErrHostNotFound = fmt.Errorf("host %w", ErrNotFound)
	// ErrCacheEntryNotFound: no cache index entry under that key.
	ErrCacheEntryNotFound = fmt.Errorf("cache entry %w", ErrNotFound)
	// ErrQueuedJobNotFound: no message of that job in the job stream.
	ErrQueuedJobNotFound = fmt.Errorf("queued job %w", ErrNotFound)
	// ErrConsumerNotFound: the job stream has no consumer of that name.
	ErrConsumerNotFound = fmt.Errorf("consumer of the job stream %w", ErrNotFound)
)
