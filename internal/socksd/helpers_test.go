package socksd

import "time"

// ioTimeout bounds each network step of a test.
const ioTimeout = 20 * time.Second
