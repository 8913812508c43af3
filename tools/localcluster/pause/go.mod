module tokensync.local/pause

go 1.22
