"""
Title: Simple MNIST convnet, the way keras-io's examples/vision/mnist_convnet.py is written
Description: A small convnet on digits, adapted to colabsession as docs/keras.md says: one import
and cs.fit in place of model.fit. Written here for the tests (not copied); scikit-learn's bundled
digits, upscaled to 16x16, stand in for MNIST (no download), and the model and the epochs are
small enough for a test.
"""
# ruff: noqa: E402  (keras-io's layout: markdown strings between the sections)

"""
## Setup
"""

import keras
import numpy as np
from keras import layers
from sklearn.datasets import load_digits  # type: ignore[import-untyped]

import colabsession as cs  # added

"""
## Prepare the data
"""

# Model / data parameters
num_classes = 10
input_shape = (16, 16, 1)

# Load the data and split it between train and test sets
digits = load_digits()
images = digits.images.repeat(2, axis=1).repeat(2, axis=2)  # 8x8 -> 16x16
(x_train, y_train), (x_test, y_test) = (
    (images[:1500], digits.target[:1500]),
    (images[1500:], digits.target[1500:]),
)

# Scale images to the [0, 1] range
x_train = x_train.astype("float32") / 16
x_test = x_test.astype("float32") / 16
# Make sure images have shape (16, 16, 1)
x_train = np.expand_dims(x_train, -1)
x_test = np.expand_dims(x_test, -1)
print("x_train shape:", x_train.shape)
print(x_train.shape[0], "train samples")
print(x_test.shape[0], "test samples")


# convert class vectors to binary class matrices
y_train = keras.utils.to_categorical(y_train, num_classes)
y_test = keras.utils.to_categorical(y_test, num_classes)

"""
## Build the model
"""

model = keras.Sequential(
    [
        keras.Input(shape=input_shape),
        layers.Conv2D(8, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Conv2D(16, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Flatten(),
        layers.Dropout(0.5),
        layers.Dense(num_classes, activation="softmax"),
    ]
)

model.summary()

"""
## Train the model
"""

batch_size = 128
epochs = 3

model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])

cs.fit(  # was: model.fit(x_train, y_train, ...)
    model,
    x_train,
    y_train,
    run="mnist-convnet",
    batch_size=batch_size,
    epochs=epochs,
    validation_split=0.1,
)

"""
## Evaluate the trained model
"""

score = model.evaluate(x_test, y_test, verbose=0)
print("Test loss:", score[0])
print("Test accuracy:", score[1])
