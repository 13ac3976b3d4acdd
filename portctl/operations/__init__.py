"""Operations on a whole store or host: copying a store into another."""
